#!/bin/bash
# pop3_retr_compare.sh - POP3 RETR throughput of big messages, ringmail and
# Dovecot in the same sitting (issue 7's "RETR throughput").
#
# Drives the existing tls_bench --mode retr (one TLS login on 995, a warm-up
# RETR 1, then RETR 1 in a loop for -d seconds; MB/s and server CPU per MB)
# against ringmail (--threads 1, its own cgroup) and Dovecot (the
# bench/peers instance, set up afresh in its own --dir so it does not touch
# other benches' instance; every Dovecot process in one cgroup, so the
# pop3-login process that does Dovecot's TLS is counted). Each server gets
# one user per size with that message as message 1 (ringmail over SMTP,
# Dovecot with doveadm save; same body bytes). Servers pinned to
# --server-cpu, the client to --load-cpu; RUNS interleaved runs, medians.
#
# usage: bench/pop3_retr_compare.sh [--ringmail PATH] [--build DIR] [--runs N]
#                                   [-d SECS] [--sizes "1 10"] [--peers-dir DIR]
set -u
here=$(cd "$(dirname "$0")" && pwd)
build=$here/../build
ringmail=
runs=3
duration=3
sizes="1 10"
peers=/var/lib/ringmail-peers-retr
server_cpu=1
load_cpu=0
while [ $# -gt 0 ]; do
	case $1 in
	--ringmail) ringmail=$2; shift ;;
	--build) build=$2; shift ;;
	--runs) runs=$2; shift ;;
	-d) duration=$2; shift ;;
	--sizes) sizes=$2; shift ;;
	--peers-dir) peers=$2; shift ;;
	-h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "pop3_retr_compare.sh: unknown option $1" >&2; exit 1 ;;
	esac
	shift
done
ringmail=${ringmail:-$build/app/ringmail}
bench=$build/bench/tls_bench
for b in "$ringmail" "$bench"; do
	[ -x "$b" ] || { echo "pop3_retr_compare.sh: $b missing" >&2; exit 1; }
done
pin_s=(taskset -c "$server_cpu")
pin_l=(taskset -c "$load_cpu")
cgroot=/sys/fs/cgroup/unified; [ -f $cgroot/cgroup.controllers ] || cgroot=/sys/fs/cgroup
[ -f $cgroot/cgroup.controllers ] || { echo "pop3_retr_compare.sh: needs cgroup v2" >&2; exit 1; }

tmp=$(mktemp -d /tmp/pop3retr.XXXXXX)
pid=
cg_rm=$cgroot/pop3retr-rm-$$
cg_dc=$cgroot/pop3retr-dc-$$
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	[ -f "$peers/dovecot/dovecot.conf" ] && doveadm -c "$peers/dovecot/dovecot.conf" stop 2>/dev/null
	for cg in "$cg_rm" "$cg_dc"; do
		for _ in $(seq 20); do [ -d "$cg" ] || break; rmdir "$cg" 2>/dev/null && break; sleep 0.2; done
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir "$cg_rm" "$cg_dc" || exit 1

# the same body for both servers
python3 - "$tmp" $sizes <<'PY' || exit 1
import sys
line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
for mb in sys.argv[2:]:
    body = line * (int(mb) * 1048576 // len(line))
    open(f"{sys.argv[1]}/body{mb}", "wb").write(b"Subject: big\r\n\r\n" + body)
PY

# ---- ringmail
off=
for _ in $(seq 50); do
	o=$((10000 + RANDOM % 19000)) busy=0
	for p in 25 26 80 110 143 443 465 587 993 995 2025 2525; do
		(exec 3<>"/dev/tcp/127.0.0.1/$((p + o))") 2>/dev/null && { busy=1; break; }
	done
	[ $busy = 0 ] && { off=$o; break; }
done
[ -n "$off" ] || { echo "pop3_retr_compare.sh: no free ports" >&2; exit 1; }
pass='bench-Secret-1'
i=0
for mb in $sizes; do
	i=$((i + 1))
	printf '%s\n' "$pass" | "$ringmail" user add "r$i@example.com" --data "$tmp/data" >/dev/null || exit 1
done
cat >"$tmp/ringmail.conf" <<CONF
[server]
hostname = mail.example.com
[limits]
message_size_max = 100m
CONF
(echo $BASHPID >"$cg_rm/cgroup.procs"; exec "${pin_s[@]}" "$ringmail" serve --config "$tmp/ringmail.conf" \
	--data "$tmp/data" --port-offset "$off" --threads 1 --log-level warn 2>"$tmp/err.log") &
pid=$!
for _ in $(seq 100); do
	(exec 3<>"/dev/tcp/127.0.0.1/$((995 + off))") 2>/dev/null && break
	kill -0 "$pid" 2>/dev/null || { cat "$tmp/err.log" >&2; exit 1; }
	sleep 0.1
done
i=0
for mb in $sizes; do
	i=$((i + 1))
	python3 - "$((25 + off))" "r$i@example.com" "$tmp/body$mb" <<'PY' || exit 1
import smtplib, sys
msg = open(sys.argv[3], "rb").read()
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=300) as s:
    s.sendmail("a@remote.example", [sys.argv[2]], msg)
PY
done

# ---- Dovecot
"$here/peers/setup.sh" --dir "$peers" --port 34025 --users "$i" --format maildir --no-install \
	>"$tmp/setup.log" 2>&1 || { cat "$tmp/setup.log" >&2; exit 1; }
(echo $BASHPID >"$cg_dc/cgroup.procs"; exec "${pin_s[@]}" dovecot -c "$peers/dovecot/dovecot.conf") ||
	{ tail "$peers/dovecot.log" >&2; exit 1; }
for _ in $(seq 100); do
	(exec 3<>"/dev/tcp/127.0.0.1/34995") 2>/dev/null && break
	sleep 0.1
done
i=0
for mb in $sizes; do
	i=$((i + 1))
	doveadm -c "$peers/dovecot/dovecot.conf" save -u "r$i@example.com" -m INBOX <"$tmp/body$mb" || exit 1
done

out=$tmp/raw.jsonl
for r in $(seq "$runs"); do
	i=0
	for mb in $sizes; do
		i=$((i + 1))
		for srv in ringmail Dovecot; do
			if [ $srv = ringmail ]; then port=$((995 + off)) cg=$cg_rm; else port=34995 cg=$cg_dc; fi
			j=$("${pin_l[@]}" "$bench" --json --server-cgroup "$cg" --port "$port" --mode retr \
				--user "r$i@example.com" --pass "$pass" -d "$duration" 2>>"$tmp/bench.err") ||
				echo "pop3_retr_compare.sh: $srv $mb MiB failed: $(tail -1 "$tmp/bench.err")" >&2
			[ -n "$j" ] && echo "{\"server\":\"$srv\",\"size_mib\":$mb,${j#\{}" >>"$out"
			echo "run $r $srv $mb MiB $j" >&2
		done
	done
done

python3 - "$out" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: st.median(xs) if xs else float("nan")
print("| message | server | MB/s | server CPU us/MB | client us/MB | other load % | runs |")
print("|---|---|---:|---:|---:|---:|---:|")
res = {}
for mb in dict.fromkeys(r["size_mib"] for r in rows):
    for srv in ("ringmail", "Dovecot"):
        rr = [r for r in rows if r["size_mib"] == mb and r["server"] == srv]
        if not rr:
            continue
        m = {k: med([r[k] for r in rr]) for k in ("MBps", "server_cpu_us_per_MB", "client_cpu_us_per_MB", "other_cpu_pct")}
        res[(mb, srv)] = m
        print(f"| {mb} MiB | {srv} | {m['MBps']:.0f} | {m['server_cpu_us_per_MB']:.0f} | "
              f"{m['client_cpu_us_per_MB']:.0f} | {m['other_cpu_pct']:.1f} | {len(rr)} |")
print()
for mb in dict.fromkeys(r["size_mib"] for r in rows):
    a, b = res.get((mb, "ringmail")), res.get((mb, "Dovecot"))
    if a and b:
        print(f"{mb} MiB: Dovecot/ringmail server CPU per MB {b['server_cpu_us_per_MB'] / a['server_cpu_us_per_MB']:.2f}x, "
              f"ringmail/Dovecot MB/s {a['MBps'] / b['MBps']:.2f}x")
PY
