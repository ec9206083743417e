#!/bin/bash
# count.sh - what the peers hold: "queued N" (files in Postfix's queue:
# accepted, not yet delivered) and, for each USER given, "USER N" (messages
# in the user's INBOX, from Dovecot's own doveadm).
#   bench/peers/count.sh [--dir DIR] [USER...]
set -u
dir=/var/lib/ringmail-peers
[ "${1:-}" = --dir ] && { dir=$2; shift 2; }
q=$(find "$dir/postfix-spool/incoming" "$dir/postfix-spool/active" "$dir/postfix-spool/deferred" \
	"$dir/postfix-spool/hold" "$dir/postfix-spool/maildrop" -type f 2>/dev/null | wc -l)
echo "queued $q"
for u in "$@"; do
	n=$(doveadm -c "$dir/dovecot/dovecot.conf" -f flow mailbox status -u "$u" messages INBOX 2>/dev/null |
		sed -n 's/.*messages=\([0-9]*\).*/\1/p')
	echo "$u ${n:-0}"
done
