#!/bin/bash
# imap_ab.sh - server CPU per IMAP operation of two or more ringmail
# binaries side by side: each on its own data directory, pinned to the same
# CPU, imapload taking turns against them (ABBA: a machine whose load
# drifts favours none). Used for the A/B figures of bench/RESULTS.md
# ("IMAP login on 993 after ...").
#
#   bench/imap_ab.sh [--runs N] [--seconds S] [--cpu C] [--scenario login|fetch|sync]
#                    [--port 143|993] [--clients N] [--users U] [--mib M] [--sync-msgs K]
#                    BUILD RINGMAIL...
#
# BUILD is the build directory with bench/imapload. The mailboxes are
# bench/compare's: users r1..r16 with 20 messages of 2 KiB each (login:
# LOGIN, SELECT, FETCH 1:* (FLAGS), LOGOUT as bench/compare runs it), and
# r17 with one M MiB message (fetch: FETCH BODY.PEEK[] of it in a loop);
# sync@example.com with K messages of 2 KiB (sync: LOGIN, SELECT, UID FETCH 1:* of the
# header fields Thunderbird syncs, LOGOUT; us per message). K: 1000.
# Defaults: 8 runs of 2 s, CPU 1, login on 993 with 16 clients, 10 MiB.
# --users U (login; default 16): client i logs in as r(i mod U + 1); past
# 17 the users r18..rU get {PLAIN} passwords and empty mailboxes. With
# --clients U above the store's user cache (256), most logins load the
# user from disk (a cold login).
# Prints one line per measurement, then per binary the median server CPU
# per operation (login: us per cycle; fetch: us per MiB; sync: us per
# message), the median
# rate, and the median of the per-run ratios to the first binary.
set -u
runs=8 secs=2 cpu=1 scen=login port=993 clients=16 mib=10 users=16 sync_msgs=1000
while [ $# -gt 0 ]; do
	case $1 in
	--runs) runs=$2; shift 2 ;;
	--seconds) secs=$2; shift 2 ;;
	--cpu) cpu=$2; shift 2 ;;
	--scenario) scen=$2; shift 2 ;;
	--port) port=$2; shift 2 ;;
	--clients) clients=$2; shift 2 ;;
	--users) users=$2; shift 2 ;;
	--mib) mib=$2; shift 2 ;;
	--sync-msgs) sync_msgs=$2; shift 2 ;;
	*) break ;;
	esac
done
[ $# -ge 2 ] || { sed -n '2,/^set -u/p' "$0" | sed '$d' >&2; exit 2; }
build=$1
shift
load=$build/bench/imapload
others=$(seq 0 $(($(nproc) - 1)) | grep -vx "$cpu" | paste -sd, -)
[ -n "$others" ] || others=$cpu
tmp=$(mktemp -d /tmp/imap-ab.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
	rm -rf "$tmp"
}
trap cleanup EXIT

ringmail=
. "$(dirname "$0")/smoke_lib.sh"

offs=()
i=0
for bin in "$@"; do
	ringmail=$bin
	mkdir -p "$tmp/$i"
	for u in r$(seq -s ' r' 17) sync; do
		printf 'bench-Secret-1\n' | "$bin" user add "$u@example.com" --data "$tmp/$i/data" \
			>/dev/null || exit 1
	done
	for u in $(seq 18 "$users"); do
		printf 'r%d@example.com:{PLAIN}bench-Secret-1\n' "$u"
	done >>"$tmp/$i/data/passwd"
	tmp_saved=$tmp
	tmp=$tmp/$i
	start_ringmail imap_ab
	tmp=$tmp_saved
	taskset -pc "$cpu" "$pid" >/dev/null
	pids+=("$pid")
	offs+=("$off")
	PORT=$((25 + off)) MIB=$mib SYNC=$sync_msgs /usr/bin/python3 - <<'PY' || exit 1
import os, smtplib
line = "The quick brown fox jumps over the lazy dog; a line of the bench message.\r\n"
small = "".join(line for _ in range(2048 // len(line)))
with smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=120) as s:
    for u in range(1, 17):
        for i in range(20):
            s.sendmail("bench@remote.example", [f"r{u}@example.com"],
                       f"From: bench@remote.example\r\nTo: r{u}@example.com\r\n"
                       f"Subject: bench {i}\r\nMessage-ID: <{u}.{i}@bench.invalid>\r\n\r\n{small}")
    big = line * (int(os.environ["MIB"]) * 1048576 // len(line))
    s.sendmail("bench@remote.example", ["r17@example.com"],
               f"From: bench@remote.example\r\nSubject: body\r\n\r\n{big}")
    for i in range(int(os.environ["SYNC"])):
        s.sendmail("bench@remote.example", ["sync@example.com"],
                   f"From: bench@remote.example\r\nTo: sync@example.com\r\n"
                   f"Subject: sync {i}\r\nMessage-ID: <sync.{i}@bench.invalid>\r\n\r\n{small}")
PY
	i=$((i + 1))
done

tls=
[ "$port" = 993 ] && tls=--tls
case $scen in
login) args=(-s login -c "$clients" --users "$users") ;;
fetch) args=(-s fetch -c "$clients" -u r17@example.com --timeout-ms 60000) ;;
sync) args=(-s sync -c "$clients" -u sync@example.com --timeout-ms 60000) ;;
*) echo "imap_ab: --scenario login|fetch|sync" >&2; exit 2 ;;
esac
results=$tmp/results
for run in $(seq 0 "$runs"); do # run 0: warm-up, not counted
	order=$(seq 0 $(($# - 1)))
	[ $((run % 2)) = 0 ] && order=$(echo "$order" | tac)
	for i in $order; do
		out=$(taskset -c "$others" "$load" "${args[@]}" $tls -p $((port + offs[i])) -d "$secs" \
			--server-pid "${pids[i]}" --json 2>/dev/null)
		v=$(echo "$out" | SCEN=$scen /usr/bin/python3 -c '
import json, os, sys
r = json.load(sys.stdin)
if os.environ["SCEN"] == "fetch":
    print(r.get("server_cpu_us_per_mib", "nan"), r["bytes_per_s"] / 1048576, r["errors_total"])
elif os.environ["SCEN"] == "sync":
    print(r.get("server_cpu_us_per_msg", "nan"), r["ops_per_s"], r["errors_total"])
else:
    print(r.get("server_cpu_us_per_op", "nan"), r["ops_per_s"], r["errors_total"])')
		[ "$run" = 0 ] && continue
		echo "run=$run bin=$i cpu_us_per_op/rate/errors=$v"
		echo "$run $i $v" >>"$results"
	done
done
echo "medians of $runs runs ($scen on $port, $clients clients; server CPU us per" \
	"$(case $scen in fetch) echo MiB ;; sync) echo message ;; *) echo cycle ;; esac)):"
/usr/bin/python3 - "$results" "$@" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
bins = sys.argv[2:]
base = {x[0]: float(x[2]) for x in rows if x[1] == "0"}
for i, b in enumerate(bins):
    r = [x for x in rows if x[1] == str(i)]
    cpu = [float(x[2]) for x in r]
    ratio = [float(x[2]) / base[x[0]] for x in r if x[0] in base]
    print(f"  {i} {b}: {statistics.median(cpu):.1f} (range {min(cpu):.1f}..{max(cpu):.1f}), "
          f"rate {statistics.median(float(x[3]) for x in r):.0f}/s, "
          f"errors {sum(int(x[4]) for x in r)}, "
          f"paired ratio to 0: {statistics.median(ratio):.3f}")
PY
