#!/bin/bash
# imap_smoke.sh RINGMAIL IMAPLOAD - the IMAP bench's smoke test (meson suite
# 'bench'): a ringmail on free ports with one user and a few messages, then
# imapload's login cycle on 143 and 993, a body FETCH over 993, a header
# sync (UID FETCH 1:* of the header fields) on 143 and 993, and the idle
# scenario (greeting-only on 143, logged in and IDLE on 993) with the
# server's memory per connection. Fails on any error, a FLAGS or sync count
# that is not the mailbox's, no body bytes, a connection not held, or a missing CPU or
# memory figure (their values are not checked: /proc/PID/stat counts 10 ms
# ticks, and a smoke run may well cost the server less than one). Exit 77
# (skip) when ringmail or imapload cannot start io_uring.
set -u
ringmail=$1
load=$2
tmp=$(mktemp -d /tmp/imap-smoke.XXXXXX)
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

. "$(dirname "$0")/smoke_lib.sh"

printf 'bench-Secret-1\n' | "$ringmail" user add r1@example.com --data "$tmp/data" >/dev/null ||
	exit 1
start_ringmail imap_smoke

# Three small messages and one of 256 KiB, over SMTP on 25.
PORT=$((25 + off)) /usr/bin/python3 - <<'PY' || exit 1
import os, smtplib
line = "x" * 76 + "\r\n"
with smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=30) as s:
    for i in range(3):
        s.sendmail("a@remote.example", ["r1@example.com"],
                   f"Subject: smoke {i}\r\n\r\nhello {i}\r\n")
    s.sendmail("a@remote.example", ["r1@example.com"],
               "Subject: big\r\n\r\n" + line * (262144 // len(line)))
PY

fail=0
run() { # name checks... -- imapload args
	local name=$1; shift
	local checks=()
	while [ "$1" != -- ]; do checks+=("$1"); shift; done
	shift
	local out rc
	out=$("$load" --json --server-pid "$pid" "$@" 2>"$tmp/$name.err")
	rc=$?
	if [ $rc = 77 ]; then
		echo "imap_smoke: io_uring unavailable in imapload, skipping" >&2
		exit 77
	fi
	echo "$name: $out"
	if [ $rc != 0 ] || ! CHECKS="${checks[*]}" /usr/bin/python3 -c '
import json, os, sys
r = json.loads(sys.argv[1])
for c in os.environ["CHECKS"].split():
    if not eval(c, {}, r):
        sys.exit(f"check failed: {c}")
' "$out"; then
		cat "$tmp/$name.err" >&2
		fail=1
	fi
}
run login143 'ops>0' 'errors_total==0' 'flags_per_cycle==4' 'server_cpu_us_per_op>=0' -- \
	-s login -p $((143 + off)) -c 4 -n 40 -d 10
run login993 'ops>0' 'errors_total==0' 'flags_per_cycle==4' -- \
	-s login --tls -p $((993 + off)) -c 2 -n 10 -d 10
run fetch993 'ops>0' 'errors_total==0' 'body_bytes>=ops*262144' 'server_cpu_us_per_mib>=0' -- \
	-s fetch --tls -p $((993 + off)) --msg 4 -n 10 -d 10
run sync143 'ops>0' 'errors_total==0' 'messages_per_sync==4' 'header_bytes>=ops*4*10' \
	'server_cpu_us_per_msg>=0' -- -s sync -p $((143 + off)) -n 20 -d 10
run sync993 'ops>0' 'errors_total==0' 'messages_per_sync==4' 'header_bytes>=ops*4*10' -- \
	-s sync --tls -p $((993 + off)) -n 10 -d 10
run idle143 'held==50' 'errors_total==0' 'vmrss_kb_after>0' -- \
	-s idle --idle-mode greet -p $((143 + off)) -c 50 --hold 0.2 --settle-ms 100
run idle993 'held==20' 'errors_total==0' 'vmrss_kb_after>0' -- \
	-s idle --tls -p $((993 + off)) -c 20 --hold 0.2 --settle-ms 100
kill -0 "$pid" 2>/dev/null || { echo "imap_smoke: ringmail died" >&2; cat "$tmp/err.log" >&2; exit 1; }
exit $fail
