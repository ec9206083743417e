#!/bin/bash
# stop.sh - stops the peer instance (Postfix, then Dovecot).
#   bench/peers/stop.sh [--dir DIR]
set -u
dir=/var/lib/ringmail-peers
[ "${1:-}" = --dir ] && dir=$2
postfix -c "$dir/postfix" stop >/dev/null 2>&1
pid=$(cat "$dir/dovecot/run/master.pid" 2>/dev/null)
# With the idle bench's 2,000 imap processes Dovecot's master took over the
# 5 s this used to wait, and the next start found it still running: wait
# up to 60 s.
if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
	for _ in $(seq 600); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
fi
# Postfix's master exits a moment after "postfix stop" returns.
pid=$(cat "$dir/postfix-spool/pid/master.pid" 2>/dev/null | tr -d ' ')
for _ in $(seq 50); do
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
	sleep 0.1
done
exit 0
