#!/bin/sh
# smoke.sh FLOOR_SERVER RINGLOAD - keeps the greeting harness from rotting.
# Starts floor-server on an ephemeral port, runs ringload against it for at
# most 2 s / 400 connections, and checks it reported > 0 connections and no
# errors. Exits 77 (skipped) when io_uring is unavailable.
set -u
floor=$1
ringload=$2
tmp=$(mktemp -d)
server_pid=
cleanup() {
	[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

"$floor" --port 0 >"$tmp/floor.out" 2>"$tmp/floor.err" &
server_pid=$!
port=
for _ in $(seq 50); do
	port=$(awk '/^listening/ { print $3 }' "$tmp/floor.out")
	[ -n "$port" ] && break
	kill -0 "$server_pid" 2>/dev/null || break
	sleep 0.1
done
if [ -z "$port" ]; then
	echo "smoke: floor-server did not start" >&2
	cat "$tmp/floor.err" >&2
	exit 1
fi

"$ringload" --port "$port" -c 8 -d 2 --max-conns 400 --timeout-ms 2000 \
	--server-pid "$server_pid" --json >"$tmp/out.json"
rc=$?
[ "$rc" -eq 77 ] && exit 77
cat "$tmp/out.json"
[ "$rc" -eq 0 ] || { echo "smoke: ringload exited $rc" >&2; exit 1; }

conns=$(sed -n 's/.*"conns":\([0-9]*\).*/\1/p' "$tmp/out.json")
errs=$(sed -n 's/.*"errors":{\([^}]*\)}.*/\1/p' "$tmp/out.json" |
	tr ',' '\n' | awk -F: '{ s += $2 } END { print s + 0 }')
if [ -z "$conns" ] || [ "$conns" -eq 0 ]; then
	echo "smoke: no connections completed" >&2
	exit 1
fi
if [ "$errs" -ne 0 ]; then
	echo "smoke: $errs errors" >&2
	exit 1
fi
echo "smoke: $conns connections, 0 errors"
