#!/bin/bash
# pop3_bench.sh - POP3 login + RETR throughput of ringmail, and of Dovecot
# in the same run when --dovecot is given.
#
# C users (user0..userC-1@example.com, {PLAIN} passwords) each get one
# ~4 kB message. bench/pop3_bench.c (built here) runs C client threads,
# one per user, each looping connect, USER, PASS, STAT, RETR 1, QUIT
# (io_uring, one process: build it with meson, --build DIR).
# ringmail gets its message over SMTP; Dovecot gets the same bytes in a
# Maildir. Both listen on loopback high ports, pinned to --server-cpu with
# one worker (ringmail --threads 1; Dovecot's processes inherit the pin),
# the client pinned to --load-cpu. Runs are interleaved (ringmail, Dovecot,
# ringmail, ...) and the medians printed, with the ratio.
#
# Dovecot is set up per its "high-performance mode" for logins
# (service pop3-login { service_count = 0, process_min_avail = CPUs }),
# with its auth cache on (ringmail caches verified credentials too).
# Needs root (Dovecot drops to the rmbench user it creates) and
# dovecot-pop3d installed for --dovecot.
#
# usage: bench/pop3_bench.sh [--build DIR] [--ringmail PATH] [--dovecot] [--runs N]
#                            [-c CLIENTS] [-d SECS] [--server-cpu N] [--load-cpu N]
set -u

here=$(cd "$(dirname "$0")" && pwd)
build=$here/../build
ringmail=
dovecot=0
runs=5
clients=16
duration=5
server_cpu=1
load_cpu=0
offset=21000
dport=23110
pass=bench-Secret-1

while [ $# -gt 0 ]; do
	case $1 in
	--build) build=$2; shift ;;
	--ringmail) ringmail=$2; shift ;;
	--dovecot) dovecot=1 ;;
	--runs) runs=$2; shift ;;
	-c) clients=$2; shift ;;
	-d) duration=$2; shift ;;
	--server-cpu) server_cpu=$2; shift ;;
	--load-cpu) load_cpu=$2; shift ;;
	*) echo "usage: $0 [--build DIR] [--ringmail PATH] [--dovecot] [--runs N] [-c N] [-d SECS]" >&2; exit 2 ;;
	esac
	shift
done

work=$(mktemp -d /tmp/pop3bench.XXXXXX)
chmod 755 "$work" # Dovecot's auth and mail processes read below it
rm_pid=
cleanup() {
	[ -n "$rm_pid" ] && kill "$rm_pid" 2>/dev/null && wait "$rm_pid" 2>/dev/null
	if [ -f "$work/dc/run/master.pid" ]; then
		kill "$(cat "$work/dc/run/master.pid")" 2>/dev/null
		sleep 1
	fi
	[ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

ringmail=${ringmail:-$build/app/ringmail}
pop3_bench=$build/bench/pop3_bench
for b in "$ringmail" "$pop3_bench"; do
	[ -x "$b" ] || { echo "pop3_bench.sh: $b missing (meson setup $build && ninja -C $build)" >&2; exit 1; }
done

wait_port() {
	for _ in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "port $1 never opened" >&2
	return 1
}

# The message: the same bytes for both servers (ringmail adds its
# Received: line, so Dovecot's copy starts with one of the same length).
body=$(for i in $(seq 50); do printf 'Line %02d of the benchmark message, some text to make it about four kB.\n' "$i"; done)

# ---- ringmail ----------------------------------------------------------
# An offset with every shifted port of the default table free.
ports_free() {
	local used
	used=$(ss -Htan | awk '{print $4}' | sed 's/.*://')
	for p in 465 587 25 26 2025 2525 993 143 995 110; do
		grep -qx $((p + $1)) <<<"$used" && return 1
	done
	return 0
}
while ! ports_free $offset; do offset=$((offset + 7)); done
mkdir -p "$work/rm"
for i in $(seq 0 $((clients - 1))); do
	echo "user$i@example.com:{PLAIN}$pass"
done > "$work/rm/passwd"
taskset -c "$server_cpu" "$ringmail" serve --data "$work/rm" --port-offset $offset \
	--threads 1 --log-level warn 2> "$work/rm.log" &
rm_pid=$!
wait_port $((offset + 110)) || exit 1
BODY=$body CLIENTS=$clients PORT=$((offset + 25)) /usr/bin/python3 - <<'EOF' || exit 1
import os, smtplib
body = os.environ["BODY"].replace("\n", "\r\n") + "\r\n"
with smtplib.SMTP("127.0.0.1", int(os.environ["PORT"])) as s:
    for i in range(int(os.environ["CLIENTS"])):
        to = f"user{i}@example.com"
        s.sendmail("bench@remote.example", [to],
                   f"From: bench@remote.example\r\nTo: {to}\r\nSubject: bench\r\n\r\n{body}")
EOF

# ---- Dovecot -------------------------------------------------------------
if [ $dovecot = 1 ]; then
	if ! command -v dovecot >/dev/null; then
		echo "dovecot not installed (apt-get install dovecot-pop3d)" >&2
		exit 1
	fi
	id rmbench >/dev/null 2>&1 || useradd --system --no-create-home rmbench
	dc=$work/dc
	mkdir -p "$dc/run" "$dc/state" "$dc/mail"
	for i in $(seq 0 $((clients - 1))); do
		echo "user$i@example.com:{PLAIN}$pass"
		d=$dc/mail/user$i@example.com/Maildir
		mkdir -p "$d/cur" "$d/new" "$d/tmp"
		{
			printf 'Received: from [127.0.0.1] ([127.0.0.1])\n\tby mail.example.com (ringmail) with ESMTP\n\tid 10000000001.1\n\tfor <user%d@example.com>; Thu, 01 Jan 2026 00:00:00 +0000\n' "$i"
			printf 'From: bench@remote.example\nTo: user%d@example.com\nSubject: bench\n\n%s\n' "$i" "$body"
		} > "$d/cur/1000000000.M1P1.bench:2,"
	done > "$dc/passwd"
	chown -R rmbench:rmbench "$dc/mail"
	uid=$(id -u rmbench)
	cat > "$dc/dovecot.conf" <<EOF
protocols = pop3
listen = 127.0.0.1
base_dir = $dc/run
state_dir = $dc/state
log_path = $dc/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
auth_cache_size = 10M
first_valid_uid = $uid
mail_location = maildir:$dc/mail/%u/Maildir
default_process_limit = 1000
default_client_limit = 4000
passdb {
  driver = passwd-file
  args = $dc/passwd
}
userdb {
  driver = static
  args = uid=rmbench gid=rmbench home=$dc/mail/%u
}
service pop3-login {
  inet_listener pop3 {
    port = $dport
  }
  inet_listener pop3s {
    port = 0
  }
  service_count = 0
  process_min_avail = 1
}
# Reuse pop3 processes too (all users share one uid here), so a session
# does not pay a fork and a config load.
service pop3 {
  service_count = 1000
  process_min_avail = 2
}
EOF
	taskset -c "$server_cpu" dovecot -c "$dc/dovecot.conf" || exit 1
	wait_port $dport || exit 1
fi

# ---- runs ------------------------------------------------------------------
run() { # name port
	taskset -c "$load_cpu" "$pop3_bench" -p "$2" -c "$clients" --users "$clients" \
		-u 'user%d@example.com' --first 0 -d "$duration" -P "$pass" --json 2>/dev/null |
		sed "s/^{/{\"server\":\"$1\",/"
}
# warm-up (auth caches, page cache, Dovecot's index files)
run ringmail $((offset + 110)) >/dev/null
[ $dovecot = 1 ] && run dovecot $dport >/dev/null
for r in $(seq "$runs"); do
	run ringmail $((offset + 110))
	[ $dovecot = 1 ] && run dovecot $dport
done | tee "$work/results.json"

/usr/bin/python3 - "$work/results.json" "$clients" "$duration" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for srv in ("ringmail", "dovecot"):
    r = [x for x in rows if x["server"] == srv]
    if not r:
        continue
    med[srv] = {k: statistics.median(x[k] for x in r)
                for k in ("ops_per_s", "p50_us", "p99_us", "p999_us", "errors_total")}
    m = med[srv]
    kinds = {k: sum(x["errors"][k] for x in r) for k in r[0]["errors"]}
    print(f"{srv:9} median of {len(r)}: {m['ops_per_s']:.0f} sessions/s "
          f"p50 {m['p50_us']/1000:.2f} ms p99 {m['p99_us']/1000:.2f} ms "
          f"p999 {m['p999_us']/1000:.2f} ms errors {m['errors_total']:.0f} "
          + " ".join(f"{k} {v}" for k, v in kinds.items() if v))
if len(med) == 2:
    print(f"ratio ringmail/dovecot sessions/s: "
          f"{med['ringmail']['ops_per_s'] / med['dovecot']['ops_per_s']:.2f}")
EOF
