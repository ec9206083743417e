#!/bin/bash
# fetch_splice.sh - server CPU per MiB of a body FETCH, plaintext (143) and
# TLS (993), for one or more ringmail binaries, interleaved run by run, next
# to the kernel floor of moving the same bytes (bench/splice_floor.c).
#
#   bench/fetch_splice.sh [--runs N] [--mib M] [--seconds S] [--cpu C] [--ports "143 993"]
#                         [--no-floor] BUILD RINGMAIL...
#
# BUILD is the build directory with bench/imapload and bench/splice-floor.
# Each RINGMAIL gets its own data directory (user r1@example.com, one
# M MiB text message delivered over SMTP by that binary, so its structure
# blob is the one that binary writes) and its own server on one loop, pinned
# to CPU C (1); the clients (imapload -c 2 -d S) and the floor's reader run
# on the other CPUs. Every run: for each binary, 143 then 993; then the
# floor in its three modes over a file of the message's size. The binaries
# take turns going first (ABBA): a machine whose load drifts favours none.
# Prints one line per measurement and the medians at the end: CPU per MiB
# of the server, of the client (imapload itself) and their sum, which is
# what the floor's sender + reader sum compares with (loopback TCP work
# lands on either side). Used for bench/RESULTS.md "Zero-copy plaintext
# FETCH".
set -u
runs=5 mib=10 secs=4 cpu=1 ports="143 993" floor_on=1
while [ $# -gt 0 ]; do
	case $1 in
	--runs) runs=$2; shift 2 ;;
	--mib) mib=$2; shift 2 ;;
	--seconds) secs=$2; shift 2 ;;
	--cpu) cpu=$2; shift 2 ;;
	--ports) ports=$2; shift 2 ;;
	--no-floor) floor_on=0; shift ;;
	*) break ;;
	esac
done
[ $# -ge 2 ] || { sed -n 2,22p "$0" >&2; exit 2; }
build=$1
shift
load=$build/bench/imapload
floor=$build/bench/splice-floor
others=$(seq 0 $(($(nproc) - 1)) | grep -vx "$cpu" | paste -sd, -)
[ -n "$others" ] || others=$cpu
tmp=$(mktemp -d /tmp/fetch-splice.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
	rm -rf "$tmp"
}
trap cleanup EXIT

ringmail=
. "$(dirname "$0")/smoke_lib.sh"

offs=() spids=()
i=0
for bin in "$@"; do
	ringmail=$bin
	mkdir -p "$tmp/$i"
	printf 'bench-Secret-1\n' | "$bin" user add r1@example.com --data "$tmp/$i/data" >/dev/null ||
		exit 1
	tmp_saved=$tmp
	tmp=$tmp/$i
	start_ringmail fetch_splice
	tmp=$tmp_saved
	taskset -pc "$cpu" "$pid" >/dev/null
	pids+=("$pid")
	offs+=("$off")
	spids+=("$pid")
	PORT=$((25 + off)) MIB=$mib /usr/bin/python3 - <<'PY' || exit 1
import os, smtplib
line = "The quick brown fox jumps over the lazy dog; a line of the bench message.\r\n"
body = line * (int(os.environ["MIB"]) * 1048576 // len(line))
with smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=120) as s:
    s.sendmail("bench@remote.example", ["r1@example.com"],
               f"From: bench@remote.example\r\nSubject: body\r\n\r\n{body}")
PY
	i=$((i + 1))
done
head -c $((mib * 1048576)) /dev/zero | tr '\0' 'x' >"$tmp/floor-file"

results=$tmp/results
for run in $(seq "$runs"); do
	order=$(seq 0 $(($# - 1)))
	[ $((run % 2)) = 0 ] && order=$(echo "$order" | tac)
	for i in $order; do
		for port in $ports; do
			tls=
			[ $port = 993 ] && tls=--tls
			out=$(taskset -c "$others" "$load" -s fetch $tls -p $((port + offs[i])) -c 2 -d "$secs" \
				-u r1@example.com --server-pid "${spids[i]}" --json 2>/dev/null)
			v=$(echo "$out" | /usr/bin/python3 -c 'import json,sys; r=json.load(sys.stdin); mib=r["body_bytes"]/1048576; print(r.get("server_cpu_us_per_mib", "nan"), r["bytes_per_s"] / 1048576, r["errors_total"], r["client_cpu_us_per_op"] * r["ops"] / mib if mib else "nan")')
			echo "run=$run bin=$i port=$port server_us_per_mib/MiB_per_s/errors/client_us_per_mib=$v"
			echo "$i $port $v" >>"$results"
		done
	done
	[ $floor_on = 1 ] || continue
	for mode in copy splice sendfile; do
		out=$(taskset -c "$cpu" "$floor" --mode "$mode" --mib 1024 --reader-cpu "${others%%,*}" \
			"$tmp/floor-file")
		echo "run=$run floor $out"
		echo "floor $mode $(echo "$out" | sed 's/.* cpu_us_per_mib=\([0-9.]*\).* reader_us_per_mib=\([0-9.]*\).*/\1 \2/')" >>"$results"
	done
done
echo "medians of $runs runs (CPU us per MiB: server, client, sum; MiB/s wall):"
/usr/bin/python3 - "$results" "$@" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
bins = sys.argv[2:]
for i, b in enumerate(bins):
    for port in ("143", "993"):
        r = [x for x in rows if x[0] == str(i) and x[1] == port]
        if not r:
            continue
        med = lambda k: statistics.median(float(x[k]) for x in r)
        print(f"  {b} {port}: server {med(2):.0f}, client {med(5):.0f}, "
              f"sum {statistics.median(float(x[2]) + float(x[5]) for x in r):.0f} us/MiB; "
              f"{med(3):.0f} MiB/s, errors {sum(int(x[4]) for x in r)}")
for mode in ("copy", "splice", "sendfile"):
    r = [(float(x[2]), float(x[3])) for x in rows if x[0] == "floor" and x[1] == mode]
    if r:
        print(f"  floor {mode}: sender {statistics.median(a for a, _ in r):.0f}, "
              f"reader {statistics.median(b for _, b in r):.0f}, "
              f"sum {statistics.median(a + b for a, b in r):.0f} us/MiB")
PY
