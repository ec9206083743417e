#!/bin/bash
# tls_smoke.sh RINGMAIL TLS_BENCH - the TLS bench's smoke test (meson suite
# 'bench'): a ringmail on free ports, then tls_bench's full, resumed,
# resumed-psk and plaintext modes on 465/993/995 for a few connections each
# (no errors, every measured resumed connection reused), a RETR over 995,
# and the crypto bound; every result with latency percentiles and errors by
# kind. Exit 77 (skip) when ringmail cannot start io_uring.
set -u
ringmail=$1
bench=$2
tmp=$(mktemp -d /tmp/tls-smoke.XXXXXX)
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

. "$(dirname "$0")/smoke_lib.sh"

printf 'smoke pass 1\n' | "$ringmail" user add smoke@example.com --data "$tmp/data" >/dev/null ||
	exit 1
cat >"$tmp/ringmail.conf" <<CONF
[server]
hostname = mail.example.com
[limits]
max_connections_per_ip = 10000
CONF
# Another test may take one of the shifted ports between the check and the
# bind: start again on another offset when that happens.
start_ringmail tls_smoke --config "$tmp/ringmail.conf"

# One small message for RETR (port 25: local delivery without AUTH).
# Wait for the greeting: a client that talks first is an early talker (554).
exec 3<>"/dev/tcp/127.0.0.1/$((25 + off))"
read -r -t 10 greeting <&3
printf '%s\n' "$greeting" >"$tmp/smtp.out"
printf 'EHLO smoke\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<smoke@example.com>\r\nDATA\r\n' >&3
printf 'Subject: smoke\r\n\r\nhello\r\n.\r\nQUIT\r\n' >&3
timeout 10 cat <&3 >>"$tmp/smtp.out"
exec 3<&-
grep -q '^250 2.0.0' "$tmp/smtp.out" || { echo "tls_smoke: delivery failed:" >&2; cat "$tmp/smtp.out" >&2; exit 1; }

fail=0
run() { # expected-reused-min args...
	local min=$1; shift
	local out
	out=$("$bench" --json --server-pid "$pid" "$@") || { echo "tls_smoke: FAILED: $* -> $out" >&2; fail=1; return; }
	echo "$out"
	# every result: latency percentiles and errors by kind, none of them
	if ! grep -q '"p50_us":[0-9]*,"p99_us":[0-9]*,"p999_us":[0-9]*' <<<"$out" ||
	   ! grep -q '"errors":{"refused":0,"reset":0,"timeout":0,"closed":0,"bad_reply":0,' <<<"$out" ||
	   ! grep -q '"errors_total":0,' <<<"$out"; then
		echo "tls_smoke: FAILED: $* (no percentiles, or errors)" >&2
		fail=1
	fi
	local conns reused
	conns=$(sed -n 's/.*"conns":\([0-9]*\).*/\1/p' <<<"$out")
	reused=$(sed -n 's/.*"reused":\([0-9]*\).*/\1/p' <<<"$out")
	if [ -n "$conns" ] && { [ "$conns" -lt 1 ] || [ "$min" = all -a "$reused" != "$conns" ]; }; then
		echo "tls_smoke: FAILED: $* (conns $conns, reused $reused)" >&2
		fail=1
	fi
}
for port in 465 993 995; do
	p=$((port + off))
	run 0 --port "$p" --mode full -c 2 -n 40
	run all --port "$p" --mode resume -c 2 -n 40
	run all --port "$p" --mode resume-psk -c 2 -n 40
	run 0 --port "$p" --mode full --tls12 -c 2 -n 20
	run all --port "$p" --mode resume --tls12 -c 2 -n 20
done
run 0 --port $((143 + off)) --mode plain -c 2 -n 40
run 0 --port $((995 + off)) --mode retr --user smoke@example.com --pass 'smoke pass 1' -n 5
"$bench" --crypto --secs 0.05 --json || fail=1
kill -0 "$pid" || { echo "tls_smoke: ringmail died" >&2; cat "$tmp/err.log" >&2; exit 1; }
exit $fail
