#!/bin/bash
# smtp_smoke.sh RINGMAIL SMTPLOAD - keeps the SMTP delivery harness from
# rotting. Starts ringmail on free high ports with a fresh data directory
# and one user, runs smtpload against it (4 sessions, at most 40 messages of
# 4 KiB, 2 s), and checks that it reported > 0 messages, no errors, and that
# the user's INBOX holds exactly as many messages as got a 250 (POP3 STAT).
# Exits 77 (skipped) when io_uring is unavailable.
set -u
ringmail=$1
smtpload=$2
tmp=$(mktemp -d /tmp/smtpsmoke.XXXXXX)
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

# An offset with every shifted port of the default table free.
ports_free() {
	local used p
	# TIME-WAIT entries (tens of thousands after a greet bench) do not stop
	# a listener's bind; listening and connected sockets do.
	used=$(ss -Htan exclude time-wait | awk '{ print $4 }' | sed 's/.*://')
	for p in 465 587 25 26 2025 2525 993 143 995 110 80 443; do
		grep -qx $((p + $1)) <<<"$used" && return 1
	done
	return 0
}
pass=smoke-Secret-1
echo "$pass" | "$ringmail" user add smoke@example.com --data "$tmp/data" >/dev/null ||
	{ echo "smtp-smoke: ringmail user add failed" >&2; exit 1; }
# Other tests start servers too: a port taken between the check and the
# bind makes ringmail exit; try another offset then.
offset=$((30000 + ($$ % 300) * 7))
for try in 1 2 3 4 5; do
	n=0
	while ! ports_free $offset && [ $n -lt 500 ]; do offset=$((offset + 7)); n=$((n + 1)); done
	"$ringmail" serve --data "$tmp/data" --port-offset "$offset" --threads 1 \
		--log-level warn 2>"$tmp/ringmail.err" &
	pid=$!
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$((offset + 25))") 2>/dev/null; then
			sleep 0.2  # ours, not another test's server: ringmail is still up
			kill -0 "$pid" 2>/dev/null && break 2
			break
		fi
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	pid=
	offset=$((offset + 7 * (try + 3)))
done
if [ -z "$pid" ]; then
	echo "smtp-smoke: ringmail did not start" >&2
	cat "$tmp/ringmail.err" >&2
	exit 1
fi

"$smtpload" --port $((offset + 25)) -c 4 -m 5 -S 4k -d 2 --max-msgs 40 --timeout-ms 5000 \
	--rcpt smoke@example.com --server-pid "$pid" --json >"$tmp/out.json"
rc=$?
[ "$rc" -eq 77 ] && exit 77
cat "$tmp/out.json"
[ "$rc" -eq 0 ] || { echo "smtp-smoke: smtpload exited $rc" >&2; exit 1; }

msgs=$(sed -n 's/.*"msgs":\([0-9]*\).*/\1/p' "$tmp/out.json")
errs=$(sed -n 's/.*"errors":{\([^}]*\)}.*/\1/p' "$tmp/out.json" |
	tr ',' '\n' | awk -F: '{ s += $2 } END { print s + 0 }')
if [ -z "$msgs" ] || [ "$msgs" -eq 0 ]; then
	echo "smtp-smoke: no message accepted" >&2
	exit 1
fi
if [ "$errs" -ne 0 ]; then
	echo "smtp-smoke: $errs errors" >&2
	exit 1
fi

# What reached the mailbox: POP3 STAT (ringmail answers 250 only once the
# message is durable in the INBOX, so the counts must be equal).
stat=$(
	exec 3<>"/dev/tcp/127.0.0.1/$((offset + 110))" || exit 1
	read -r -t 5 _ <&3
	printf 'USER smoke@example.com\r\n' >&3; read -r -t 5 _ <&3
	printf 'PASS %s\r\n' "$pass" >&3; read -r -t 5 _ <&3
	printf 'STAT\r\n' >&3; read -r -t 5 line <&3
	printf 'QUIT\r\n' >&3; read -r -t 5 _ <&3
	echo "$line"
)
inbox=$(sed -n 's/^+OK \([0-9]*\) .*/\1/p' <<<"$stat")
if [ "$inbox" != "$msgs" ]; then
	echo "smtp-smoke: $msgs messages got a 250 but the INBOX holds '${inbox}' ($stat)" >&2
	exit 1
fi
echo "smtp-smoke: $msgs messages accepted and in the INBOX, 0 errors"
