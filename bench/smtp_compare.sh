#!/bin/bash
# smtp_compare.sh - durable SMTP deliveries per second and server CPU per
# message: ringmail against Postfix delivering over LMTP to Dovecot (issue 5).
#
# For each case (message size x concurrent sessions) it runs bench/smtpload
# against ringmail and, with --peers, against the Postfix+Dovecot instance of
# bench/peers/, RUNS times each, interleaved (ringmail, peers, ringmail, ...)
# after one unrecorded warm-up run each. Every run delivers to mailboxes of
# its own (users rN@example.com, N counting up), so no run inherits a big
# mailbox from the one before: one mailbox for all sessions (--rcpts 1), or
# R mailboxes with session i delivering to the (i mod R)-th.
#
# --submission loads the submission row instead of the MX one: implicit TLS
# on 465 (TLS 1.3), AUTH PLAIN as the session's own user (the recipient:
# rN@example.com sends to itself) and MAIL FROM that user, on ringmail's
# 465 and Postfix's (SASL through Dovecot's auth: bench/peers/README.md).
#
# A run: read the server's CPU (its cgroup's cpu.stat), start the clock, run
# smtpload for -d seconds (C sessions of M messages of S bytes, each message
# acknowledged by a 250 after its dot), then wait until the server has put
# everything it acknowledged into the mailbox (ringmail: at once, its 250
# comes after the fsync of the INBOX; Postfix: its 250 means "in my queue",
# so the run waits until Postfix's queue is empty, at most --drain-timeout),
# stop the clock, read the CPU again, count the messages in the mailbox
# (ringmail: POP3 STAT; Dovecot: doveadm mailbox status).
#   delivered/s = messages in the mailbox / (load + drain time)
#   CPU/msg     = server CPU over the same window / messages in the mailbox
# Servers (ringmail --threads 1; Postfix's and Dovecot's processes) are
# pinned to --server-cpu, smtpload to --load-cpu. ringmail runs at its
# default log level (info: one line per delivery), as Postfix and Dovecot
# log one line per message too.
#
# usage: bench/smtp_compare.sh [options]
#   --ringmail PATH      ringmail binary (build-sbench/app/ringmail)
#   --build DIR          build dir holding bench/smtpload (build-sbench)
#   --peers              also measure Postfix -> LMTP -> Dovecot (root; runs
#                        bench/peers/setup.sh, which installs them with apt)
#   --peers-dir DIR      the peer instance (/var/lib/ringmail-peers)
#   --sizes LIST         message sizes (4k,64k)
#   --sessions LIST      concurrent sessions (1,50)
#   --rcpts LIST         distinct recipient mailboxes per run (1)
#   --submission         port 465, implicit TLS, AUTH PLAIN (else port 25, plaintext)
#   -m N                 messages per session (20)
#   -d SECS              seconds of load per run (10)
#   --warmup SECS        the unrecorded warm-up run per server and case (3)
#   --runs N             runs per server and case (3)
#   --warmup SECS        the unrecorded warm-up run per server and case (3)
#   --drain-timeout SECS longest wait for a queue to empty (120)
#   --server-cpu N       core for the servers (1)
#   --load-cpu N         core for smtpload (0)
#   --ringmail-args ARGS more arguments for "ringmail serve"
#   --max-other PCT      repeat a run when other tenants used more than PCT %
#                        of a core during it (25)
#   --retries N          at most N repeats per run (2)
#   --raw FILE           also append every result line to FILE
set -u

here=$(cd "$(dirname "$0")" && pwd)
build=$here/../build-sbench
ringmail=
peers=0
peers_dir=/var/lib/ringmail-peers
sizes=4k,64k
sessions_list=1,50
rcpts_list=1
msgs=20
duration=10
runs=3
warmup=3
drain_timeout=120
server_cpu=1
load_cpu=0
ringmail_args=
submission=0
warmup=3
max_other=25
retries=2
raw=

while [ $# -gt 0 ]; do
	case $1 in
	--ringmail) ringmail=$2; shift ;;
	--build) build=$2; shift ;;
	--peers) peers=1 ;;
	--peers-dir) peers_dir=$2; shift ;;
	--sizes) sizes=$2; shift ;;
	--sessions) sessions_list=$2; shift ;;
	--rcpts) rcpts_list=$2; shift ;;
	--submission) submission=1 ;;
	--warmup) warmup=$2; shift ;;
	-m) msgs=$2; shift ;;
	-d) duration=$2; shift ;;
	--runs) runs=$2; shift ;;
	--warmup) warmup=$2; shift ;;
	--drain-timeout) drain_timeout=$2; shift ;;
	--server-cpu) server_cpu=$2; shift ;;
	--load-cpu) load_cpu=$2; shift ;;
	--ringmail-args) ringmail_args=$2; shift ;;
	--max-other) max_other=$2; shift ;;
	--retries) retries=$2; shift ;;
	--raw) raw=$2; shift ;;
	-h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "smtp_compare.sh: unknown option $1" >&2; exit 1 ;;
	esac
	shift
done

[ -n "$ringmail" ] || ringmail=$build/app/ringmail
smtpload=$build/bench/smtpload
for b in "$ringmail" "$smtpload"; do
	[ -x "$b" ] || { echo "smtp_compare.sh: $b missing: meson setup build-sbench && ninja -C build-sbench" >&2; exit 1; }
done

pin_server=()
pin_load=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
	pin_server=(taskset -c "$server_cpu")
	pin_load=(taskset -c "$load_cpu")
else
	echo "smtp_compare.sh: fewer than 2 cores or no taskset: not pinning" >&2
fi

# R users per warm-up (shared by the servers) and per try of each server's runs
ncases=$(( $(tr ',' '\n' <<<"$sizes" | wc -l) * $(tr ',' '\n' <<<"$sessions_list" | wc -l) ))
nusers=1
for r in ${rcpts_list//,/ }; do
	nusers=$(( nusers + ncases * r * (1 + runs * 2 * (1 + retries)) ))
done

tmp=$(mktemp -d /tmp/smtpbench.XXXXXX)
chmod 755 "$tmp"
rm_pid=
peers_up=0
cgroups=()
cleanup() {
	[ -n "$rm_pid" ] && kill "$rm_pid" 2>/dev/null && wait "$rm_pid" 2>/dev/null
	[ $peers_up = 1 ] && "$here/peers/stop.sh" --dir "$peers_dir"
	for cg in "${cgroups[@]}"; do
		for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
			rmdir "$cg" 2>/dev/null && break
			sleep 0.1
		done
	done
	[ -n "${KEEP:-}" ] && echo "kept $tmp" >&2 || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A writable cgroup v2 hierarchy (the unified one or a hybrid's): the
# servers' CPU, every thread and child included, in microseconds.
cgroot=
for d in /sys/fs/cgroup /sys/fs/cgroup/unified; do
	if [ -f "$d/cgroup.procs" ] && [ -f "$d/cgroup.controllers" ] &&
	   mkdir "$d/smtpbench-probe-$$" 2>/dev/null; then
		rmdir "$d/smtpbench-probe-$$"
		cgroot=$d
		break
	fi
done
new_cgroup() { # NAME -> path, or nothing
	[ -n "$cgroot" ] || return 0
	local cg=$cgroot/smtpbench-$1-$$
	mkdir "$cg" && echo "$cg"
}

# cpu_us NAME: the server's CPU so far, in microseconds.
cpu_us() {
	local cg=${cgpath[$1]:-}
	if [ -n "$cg" ]; then
		awk '$1 == "usage_usec" { print $2 }' "$cg/cpu.stat"
	else
		# no cgroup: ringmail's own /proc/PID/stat (ticks of 10 ms)
		awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) * 1000000 / hz }' \
			"/proc/$rm_pid/stat"
	fi
}
declare -A cgpath port

wait_port() { # PORT PID
	for _ in $(seq 100); do
		[ -z "${2:-}" ] || kill -0 "$2" 2>/dev/null || return 1
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# ---- ringmail ------------------------------------------------------------
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
# From 27000: the peers' table at 24000 reaches 26525 (2525 + 24000).
offset=27000
while ! ports_free $offset; do
	offset=$((offset + 7))
	[ $offset -lt 40000 ] || { echo "smtp_compare.sh: no free port offset in 27000..40000" >&2; exit 1; }
done
pass=bench-Secret-1
# The first user through "ringmail user add"; the others as {PLAIN} lines of
# the same passwd-file, as Dovecot's passwd-file has them (one yescrypt hash
# each would take minutes; an MX delivery never checks a password, a
# submission login compares the plain password, as Dovecot's does).
echo "$pass" | "$ringmail" user add r1@example.com --data "$tmp/rm" >/dev/null 2>&1 ||
	{ echo "smtp_compare.sh: ringmail user add failed" >&2; exit 1; }
for i in $(seq 2 "$nusers"); do
	echo "r$i@example.com:{PLAIN}$pass"
done >>"$tmp/rm/passwd"
# shellcheck disable=SC2086 # ringmail_args is a list of words
"${pin_server[@]}" "$ringmail" serve --port-offset "$offset" --data "$tmp/rm" --threads 1 \
	$ringmail_args >"$tmp/ringmail.out" 2>"$tmp/ringmail.log" &
rm_pid=$!
if ! wait_port $((offset + 25)) "$rm_pid"; then
	echo "smtp_compare.sh: ringmail did not listen on $((offset + 25)):" >&2
	tail -20 "$tmp/ringmail.log" >&2
	exit 1
fi
cgpath[ringmail]=$(new_cgroup ringmail)
if [ -n "${cgpath[ringmail]}" ]; then
	cgroups+=("${cgpath[ringmail]}")
	echo "$rm_pid" >"${cgpath[ringmail]}/cgroup.procs"
fi
# the row of the ports table loaded: MX (25) or submission (465, TLS, AUTH)
row_port=25
load_args=()
if [ $submission = 1 ]; then
	row_port=465
	load_args=(--tls --user "r%d@example.com" --pass "$pass")
fi
port[ringmail]=$((offset + row_port))
servers=(ringmail)

# ---- Postfix -> Dovecot ----------------------------------------------------
if [ $peers = 1 ]; then
	[ -n "$cgroot" ] || { echo "smtp_compare.sh: --peers needs a writable cgroup v2 (to sum their processes' CPU)" >&2; exit 1; }
	"$here/peers/stop.sh" --dir "$peers_dir"
	"$here/peers/setup.sh" --dir "$peers_dir" --users "$nusers" >"$tmp/peers-setup.log" 2>&1 ||
		{ echo "smtp_compare.sh: bench/peers/setup.sh failed:" >&2; tail "$tmp/peers-setup.log" >&2; exit 1; }
	cgpath[peers]=$(new_cgroup peers)
	cgroups+=("${cgpath[peers]}")
	peers_up=1
	"$here/peers/start.sh" --dir "$peers_dir" --cpu "$server_cpu" --cgroup "${cgpath[peers]}" >/dev/null ||
		exit 1
	. "$peers_dir/env"
	port[peers]=$((PORT - 25 + row_port))
	servers+=(peers)
	# Create every INBOX before the runs (doveadm opens it): concurrent first
	# deliveries into a new mdbox mailbox race in Dovecot 2.3.19 ("Mailbox
	# already exists", or a panic on an index lock), and Postfix defers the
	# message for minutes. A mailbox that exists is what an MX delivers to.
	for i in $(seq 1 "$nusers"); do echo "r$i@example.com"; done |
		xargs -n 64 "$here/peers/count.sh" --dir "$peers_dir" >/dev/null
fi

# inbox NAME BASE R: messages in the INBOXes of users rBASE+1..rBASE+R.
pop3_stat() { # PORT USER
	(
		exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
		read -r -t 10 _ <&3
		printf 'USER %s\r\n' "$2" >&3; read -r -t 10 _ <&3
		printf 'PASS %s\r\n' "$pass" >&3; read -r -t 10 _ <&3
		printf 'STAT\r\n' >&3; read -r -t 60 line <&3
		printf 'QUIT\r\n' >&3; read -r -t 10 _ <&3
		sed -n 's/^+OK \([0-9]*\) .*/\1/p' <<<"$line"
	)
}
inbox() {
	local i users=()
	for i in $(seq $(($2 + 1)) $(($2 + $3))); do
		users+=("r$i@example.com")
	done
	if [ "$1" = ringmail ]; then
		for i in "${users[@]}"; do
			pop3_stat $((offset + 110)) "$i"
		done | awk '{ s += $1 } END { print s + 0 }'
	else
		"$here/peers/count.sh" --dir "$peers_dir" "${users[@]}" |
			awk '$1 != "queued" && $1 != "deferred" { s += $2 } END { print s + 0 }'
	fi
}
deferred() { # NAME: messages whose delivery failed and waits for a retry
	if [ "$1" = ringmail ]; then
		echo 0
	else
		"$here/peers/count.sh" --dir "$peers_dir" | awk '$1 == "deferred" { print $2 }'
	fi
}
queued() { # NAME: messages accepted, no delivery attempt finished yet
	if [ "$1" = ringmail ]; then
		echo 0
	else
		"$here/peers/count.sh" --dir "$peers_dir" | awk '$1 == "queued" { print $2 }'
	fi
}
alive() {
	kill -0 "$rm_pid" 2>/dev/null || return 1
	if [ $peers = 1 ]; then
		kill -0 "$(tr -d ' ' <"$peers_dir/postfix-spool/pid/master.pid")" 2>/dev/null &&
			kill -0 "$(cat "$peers_dir/dovecot/run/master.pid")" 2>/dev/null || return 1
	fi
}

# run NAME SIZE SESSIONS SECS BASE R -> one result line on stdout:
# name size sessions rcpts acked inbox secs rate cpu_us_per_msg p50 p99 errors other queued
# p999 json
run() {
	local name=$1 size=$2 sess=$3 secs=$4 base=$5 nr=$6 line t0 t1 c0 c1 q n waited acked
	c0=$(cpu_us "$name")
	t0=$(date +%s%N)
	local cpuopt=()
	[ -n "${cgpath[$name]:-}" ] && cpuopt=(--server-cgroup "${cgpath[$name]}")
	line=$("${pin_load[@]}" "$smtpload" --port "${port[$name]}" -c "$sess" -m "$msgs" -S "$size" \
		-d "$secs" --rcpt "r%d@example.com" --rcpt-base "$base" --rcpt-count "$nr" \
		"${load_args[@]}" "${cpuopt[@]}" --json 2>"$tmp/smtpload.err")
	local rc=$?
	if [ $rc -ne 0 ] || [ -z "$line" ]; then
		echo "smtp_compare.sh: smtpload failed ($rc) against $name:" >&2
		cat "$tmp/smtpload.err" >&2
		return 1
	fi
	# Errors are counted, not fatal; show what they were.
	if ! grep -q '"errors_total":0,' <<<"$line"; then
		grep -E '^  (errors|last unexpected)' "$tmp/smtpload.err" | sed "s/^ */  $name: /" >&2
	fi
	# Wait until everything accepted has left the queue for the mailbox.
	waited=0
	while q=$(queued "$name") && [ "$q" -gt 0 ]; do
		if [ "$waited" -ge $((drain_timeout * 20)) ]; then
			echo "smtp_compare.sh: $name: $q messages still queued after ${drain_timeout}s" >&2
			break
		fi
		sleep 0.05
		waited=$((waited + 1))
	done
	t1=$(date +%s%N)
	c1=$(cpu_us "$name")
	n=$(inbox "$name" "$base" "$nr")
	local dq
	dq=$(deferred "$name")
	[ "$dq" -gt 0 ] && echo "smtp_compare.sh: $name: $dq messages deferred (see its log)" >&2
	acked=$(sed -n 's/.*"msgs":\([0-9]*\).*/\1/p' <<<"$line")
	if [ "$dq" -eq 0 ] && [ "${n:-0}" -lt "${acked:-0}" ]; then
		echo "smtp_compare.sh: $name: $acked messages got a 250 but only ${n:-0} are in the mailboxes" >&2
	fi
	local errs other p50 p99 p999
	errs=$(sed -n 's/.*"errors_total":\([0-9]*\).*/\1/p' <<<"$line")
	other=$(sed -n 's/.*"other_cpu_pct":\([0-9.]*\).*/\1/p' <<<"$line")
	p50=$(sed -n 's/.*"p50_us":\([0-9]*\).*/\1/p' <<<"$line")
	p99=$(sed -n 's/.*"p99_us":\([0-9]*\).*/\1/p' <<<"$line")
	p999=$(sed -n 's/.*"p999_us":\([0-9]*\).*/\1/p' <<<"$line")
	awk -v nm="$name" -v sz="$size" -v ss="$sess" -v nr="$nr" -v a="$acked" -v n="${n:-0}" \
	    -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" -v p50="$p50" -v p99="$p99" \
	    -v p999="$p999" -v e="${errs:-0}" -v o="${other:-0}" -v q="$q" -v j="$line" 'BEGIN {
		s = (t1 - t0) / 1e9
		printf "%s %s %s %s %d %d %.3f %.1f %.1f %s %s %d %s %d %s %s\n", nm, sz, ss, nr, a, n, s,
			n / s, (n > 0 ? (c1 - c0) / n : 0), p50, p99, e, o, q, p999, j }'
}

is_disturbed() { # OTHER_PCT
	awk -v o="$1" -v m="$max_other" 'BEGIN { exit !(o > m) }'
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
retried=0
user_seq=0
: >"$tmp/results"
for size in ${sizes//,/ }; do
	for sess in ${sessions_list//,/ }; do
	for nr in ${rcpts_list//,/ }; do
		for name in "${servers[@]}"; do
			run "$name" "$size" "$sess" "$warmup" "$user_seq" "$nr" >/dev/null || exit 1
		done
		user_seq=$((user_seq + nr))
		for i in $(seq "$runs"); do
			for name in "${servers[@]}"; do
				for try in $(seq 0 "$retries"); do
					res=$(run "$name" "$size" "$sess" "$duration" "$user_seq" "$nr") || exit 1
					user_seq=$((user_seq + nr))
					alive || { echo "smtp_compare.sh: a server died; see $tmp (KEEP=1)" >&2; exit 1; }
					read -r _ _ _ _ acked n secs rate cpu p50 p99 errs other q _ <<<"$res"
					echo "run $i $name ${size} x$sess -> $nr mailboxes: $n in mailbox ($acked acked) in ${secs}s = $rate/s, $cpu us/msg, p50 $p50 us, errors $errs, other load $other%" >&2
					if [ "$try" -lt "$retries" ] && is_disturbed "$other"; then
						retried=$((retried + 1))
						echo "  disturbed (> $max_other%): again" >&2
						continue
					fi
					break
				done
				echo "$res" >>"$tmp/results"
				[ -n "$raw" ] && echo "$res" >>"$raw"
			done
		done
	done
	done
done

median() {
	sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan";
		else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
col() { # SERVER SIZE SESSIONS RCPTS FIELD#
	awk -v n="$1" -v s="$2" -v c="$3" -v r="$4" -v f="$5" \
		'$1 == n && $2 == s && $3 == c && $4 == r { print $f }' "$tmp/results" | median
}

echo
if [ $submission = 1 ]; then
	what="port 465: implicit TLS 1.3, AUTH PLAIN as the recipient's user, MAIL FROM the user"
else
	what="port 25: plaintext, no AUTH"
fi
echo "Durable SMTP delivery, $what: $msgs messages per session, ${duration} s per run, medians of $runs runs"
if [ -n "$cgroot" ]; then src="cgroup v2 cpu.stat under $cgroot"; else src="/proc/PID/stat (ringmail only)"; fi
echo "(servers on core $server_cpu, smtpload on core $load_cpu; server CPU from $src)"
echo
echo "| size | sessions | mailboxes | server | delivered msgs/s | server CPU us/msg | p50 ms | p99 ms | p999 ms | in mailbox / acked | errors | other load % |"
echo "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for size in ${sizes//,/ }; do
	for sess in ${sessions_list//,/ }; do
	for nr in ${rcpts_list//,/ }; do
		for name in "${servers[@]}"; do
			label=$name
			[ "$name" = peers ] && label="Postfix+Dovecot"
			rate=$(col "$name" "$size" "$sess" "$nr" 8)
			cpu=$(col "$name" "$size" "$sess" "$nr" 9)
			p50=$(col "$name" "$size" "$sess" "$nr" 10)
			p99=$(col "$name" "$size" "$sess" "$nr" 11)
			p999=$(col "$name" "$size" "$sess" "$nr" 15)
			other=$(col "$name" "$size" "$sess" "$nr" 13)
			sel='$1 == n && $2 == s && $3 == c && $4 == r'
			inbox=$(awk -v n="$name" -v s="$size" -v c="$sess" -v r="$nr" "$sel"' { i += $6; a += $5 } END { printf "%d / %d", i, a }' "$tmp/results")
			errs=$(awk -v n="$name" -v s="$size" -v c="$sess" -v r="$nr" "$sel"' { e += $12 } END { print e + 0 }' "$tmp/results")
			printf '| %s | %s | %s | %s | %.0f | %.0f | %.2f | %.2f | %.2f | %s | %s | %s |\n' "$size" "$sess" "$nr" "$label" \
				"$rate" "$cpu" "$(awk -v v="$p50" 'BEGIN { print v / 1000 }')" \
				"$(awk -v v="$p99" 'BEGIN { print v / 1000 }')" \
				"$(awk -v v="$p999" 'BEGIN { print v / 1000 }')" "$inbox" "$errs" "$other"
			echo "$name $size $sess/$nr $rate $cpu" >>"$tmp/medians"
		done
	done
	done
done
echo
if [ $peers = 1 ]; then
	echo "| size | sessions/mailboxes | ringmail/peers msgs/s (goal >= 20) | peers/ringmail CPU per msg | ringmail CPU us/msg (goal <= 200) |"
	echo "|---|---:|---:|---:|---:|"
	awk '{ k = $2 " " $3; r[$1 " " k] = $4; c[$1 " " k] = $5; if (!(k in seen)) { seen[k] = 1; o[++n] = k } }
	     END { for (i = 1; i <= n; i++) { k = o[i]; split(k, a, " ");
		printf "| %s | %s | %.1fx | %.1fx | %.0f |\n", a[1], a[2],
			(r["peers " k] > 0 ? r["ringmail " k] / r["peers " k] : 0),
			(c["ringmail " k] > 0 ? c["peers " k] / c["ringmail " k] : 0), c["ringmail " k] } }' "$tmp/medians"
else
	echo "(no --peers: ringmail only)"
fi
echo
echo "runs repeated because of other load (> $max_other% of a core): $retried"
echo "load average before/after: $load_before / $(cut -d' ' -f1-3 /proc/loadavg)"
