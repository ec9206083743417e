#!/bin/bash
# smtp_smoke.sh RINGMAIL SMTPLOAD - keeps the SMTP delivery harness from
# rotting. Starts ringmail on free high ports with a fresh data directory
# and two users, runs smtpload against it twice (4 sessions, at most 40
# messages of 4 KiB, 2 s): plaintext on 25 to smoke@, then implicit TLS on
# 465 with AUTH PLAIN as smoke2@ (MAIL FROM smoke2@, to smoke2@); checks
# each reported > 0 messages, no errors (and, on 465, a handshake and a
# login per session), and that each INBOX holds exactly as many messages as
# got a 250 (POP3 STAT). Then one 465 session with a wrong password must
# count an "auth" error and deliver nothing.
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
for u in smoke smoke2; do
	echo "$pass" | "$ringmail" user add $u@example.com --data "$tmp/data" >/dev/null ||
		{ echo "smtp-smoke: ringmail user add failed" >&2; exit 1; }
done
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

# json FILE KEY: a number from smtpload's JSON line
json() { sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p" "$1"; }

# What reached the mailbox: POP3 STAT (ringmail answers 250 only once the
# message is durable in the INBOX, so the counts must be equal).
inbox() { # USER
	local stat
	stat=$(
		exec 3<>"/dev/tcp/127.0.0.1/$((offset + 110))" || exit 1
		read -r -t 5 _ <&3
		printf 'USER %s\r\n' "$1" >&3; read -r -t 5 _ <&3
		printf 'PASS %s\r\n' "$pass" >&3; read -r -t 5 _ <&3
		printf 'STAT\r\n' >&3; read -r -t 5 line <&3
		printf 'QUIT\r\n' >&3; read -r -t 5 _ <&3
		echo "$line"
	)
	sed -n 's/^+OK \([0-9]*\) .*/\1/p' <<<"$stat"
}

# load NAME USER SMTPLOAD-ARGS...: runs smtpload, checks its counts and USER's INBOX
load() {
	local name=$1 user=$2 rc msgs errs n
	shift 2
	"$smtpload" -c 4 -m 5 -S 4k -d 2 --max-msgs 40 --timeout-ms 5000 --rcpt "$user" \
		--server-pid "$pid" --json "$@" >"$tmp/$name.json" 2>"$tmp/$name.err"
	rc=$?
	[ "$rc" -eq 77 ] && exit 77
	cat "$tmp/$name.json"
	[ "$rc" -eq 0 ] || { cat "$tmp/$name.err" >&2; echo "smtp-smoke: $name: smtpload exited $rc" >&2; exit 1; }
	msgs=$(json "$tmp/$name.json" msgs)
	errs=$(json "$tmp/$name.json" errors_total)
	if [ -z "$msgs" ] || [ "$msgs" -eq 0 ]; then
		cat "$tmp/$name.err" >&2
		echo "smtp-smoke: $name: no message accepted" >&2
		exit 1
	fi
	if [ "$errs" != 0 ]; then
		cat "$tmp/$name.err" >&2
		echo "smtp-smoke: $name: $errs errors" >&2
		exit 1
	fi
	n=$(inbox "$user")
	if [ "$n" != "$msgs" ]; then
		echo "smtp-smoke: $name: $msgs messages got a 250 but $user's INBOX holds '$n'" >&2
		exit 1
	fi
	echo "smtp-smoke: $name: $msgs messages accepted and in $user's INBOX, 0 errors"
}

load plain-25 smoke@example.com --port $((offset + 25))
load tls-auth-465 smoke2@example.com --port $((offset + 465)) --tls --user smoke2@example.com \
	--pass "$pass"
sessions=$(json "$tmp/tls-auth-465.json" sessions_done)
for k in handshakes logins; do
	v=$(json "$tmp/tls-auth-465.json" $k)
	# every session that said QUIT had its handshake and its login
	if [ -z "$v" ] || [ "$v" -lt "$sessions" ] || [ "$sessions" -eq 0 ]; then
		echo "smtp-smoke: tls-auth-465: $k '$v' for $sessions sessions" >&2
		exit 1
	fi
done

# A wrong password: counted as an "auth" error (after ringmail's 2 s
# failure delay), nothing delivered.
"$smtpload" --port $((offset + 465)) --tls --user smoke2@example.com --pass wrong-Secret \
	--rcpt smoke2@example.com -c 1 -m 1 -d 0.2 --timeout-ms 10000 --json >"$tmp/bad.json" 2>/dev/null
cat "$tmp/bad.json"
if [ "$(sed -n 's/.*"errors":{[^}]*"auth":\([0-9]*\).*/\1/p' "$tmp/bad.json")" != 1 ] ||
   [ "$(json "$tmp/bad.json" msgs)" != 0 ]; then
	echo "smtp-smoke: a wrong password was not one auth error" >&2
	exit 1
fi
echo "smtp-smoke: a wrong password on 465 is an auth error"
