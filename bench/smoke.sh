#!/bin/sh
# smoke.sh FLOOR_SERVER RINGLOAD [LOOP_FLOOR] - keeps the greeting harness
# from rotting. Starts floor-server on an ephemeral port, runs ringload
# against it for at most 2 s / 400 connections, and checks it reported > 0
# connections and no errors; then the same against loop-floor (the floor
# built from ringmail's engine) on a free high port. Exits 77 (skipped) when
# io_uring is unavailable.
set -u
floor=$1
ringload=$2
loop_floor=${3:-}
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

check() { # PORT PID NAME
	"$ringload" --port "$1" -c 8 -d 2 --max-conns 400 --timeout-ms 2000 \
		--server-pid "$2" --json >"$tmp/out.json"
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
	echo "smoke: $3: $conns connections, 0 errors"
}
check "$port" "$server_pid" floor-server || exit 1
kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
server_pid=
[ -n "$loop_floor" ] || exit 0

# loop-floor binds a configured port: try free-looking ones until one binds
for _ in 1 2 3 4 5 6 7 8; do
	port=$((20000 + $(od -An -N2 -tu2 /dev/urandom) % 20000))
	"$loop_floor" --port "$port" >"$tmp/lf.out" 2>"$tmp/lf.err" &
	server_pid=$!
	for _ in $(seq 50); do
		grep -q '^listening' "$tmp/lf.out" && break
		kill -0 "$server_pid" 2>/dev/null || break
		sleep 0.1
	done
	grep -q '^listening' "$tmp/lf.out" && break
	wait "$server_pid"
	rc=$?
	server_pid=
	[ $rc = 77 ] && { echo "smoke: loop-floor: io_uring unavailable" >&2; exit 77; }
	grep -qi "in use" "$tmp/lf.err" || { cat "$tmp/lf.err" >&2; exit 1; }
done
[ -n "$server_pid" ] || { echo "smoke: loop-floor found no free port" >&2; exit 1; }
check "$port" "$server_pid" loop-floor
