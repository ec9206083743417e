#!/bin/bash
# count.sh - what the peers hold: "queued N" (in Postfix's incoming and
# active queues: accepted, no delivery attempt finished yet), "deferred N"
# (a delivery attempt failed; retried later) and, for each USER given,
# "USER N" (messages in the user's INBOX, from Dovecot's own doveadm; the
# lookup opens the INBOX, which creates it when missing).
#   bench/peers/count.sh [--dir DIR] [USER...]
set -u
dir=/var/lib/ringmail-peers
[ "${1:-}" = --dir ] && { dir=$2; shift 2; }
# in flight: received, not yet delivered or deferred
q=$(find "$dir/postfix-spool/incoming" "$dir/postfix-spool/active" "$dir/postfix-spool/maildrop" \
	-type f 2>/dev/null | wc -l)
# deferred: a delivery attempt failed; Postfix retries after minimal_backoff_time
d=$(find "$dir/postfix-spool/deferred" "$dir/postfix-spool/hold" -type f 2>/dev/null | wc -l)
echo "queued $q"
echo "deferred $d"
for u in "$@"; do
	n=$(doveadm -c "$dir/dovecot/dovecot.conf" -f flow mailbox status -u "$u" messages INBOX 2>/dev/null |
		sed -n 's/.*messages=\([0-9]*\).*/\1/p')
	echo "$u ${n:-0}"
done
