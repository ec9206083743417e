#!/bin/bash
# heap_per_conn.sh - what holds a ringmail connection's memory, by jemalloc
# size class: a snapshot of jemalloc's statistics (malloc_stats_print, JSON,
# through gdb attached for a moment), imapload's idle scenario holding N
# connections, a second snapshot while they are held, and per size class the
# allocations the N connections added (current regions after - before) / N.
#
#   bench/heap_per_conn.sh PID IMAPLOAD [imapload idle options, with -c N]
#   e.g. bench/heap_per_conn.sh $(pidof ringmail) build/bench/imapload -p 10993 --tls -c 1000
#
# Needs gdb and root (ptrace). The snapshot stops the server for a few ms.
set -u
pid=$1
load=$2
shift 2
n=
prev=
for a in "$@"; do
	[ "$prev" = -c ] && n=$a
	prev=$a
done
[ -n "$n" ] || { echo "heap_per_conn.sh: give imapload -c N" >&2; exit 2; }
command -v gdb >/dev/null || { echo "heap_per_conn.sh: gdb missing" >&2; exit 1; }
tmp=$(mktemp -d /tmp/heapconn.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

snapshot() { # OUT: the process's stderr is pointed at OUT while jemalloc prints
	gdb -batch -p "$pid" \
		-ex "set \$fd = (int)open(\"$1\", 0101, 0644)" \
		-ex 'set $save = (int)dup(2)' \
		-ex 'call (int)dup2($fd, 2)' \
		-ex 'call (void)malloc_stats_print(0, 0, "Jdaxeh")' \
		-ex 'call (int)dup2($save, 2)' \
		-ex 'call (int)close($save)' \
		-ex 'call (int)close($fd)' >/dev/null 2>&1
	[ -s "$1" ] || { echo "heap_per_conn.sh: no jemalloc statistics from $pid" >&2; exit 1; }
}

# a warm-up connection first, so the before snapshot holds what one first
# connection loads once (the user's mailbox, the TLS context's state)
"$load" -s idle --hold 0 --settle-ms 0 "$@" -c 1 >/dev/null 2>&1 || true
snapshot "$tmp/before.json"
"$load" -s idle --hold 30 --settle-ms 0 "$@" >"$tmp/load.out" 2>&1 &
lpid=$!
# until the server holds N more connections (its fd count), at most 60 s
fd0=$(ls /proc/"$pid"/fd | wc -l)
for _ in $(seq 600); do
	[ $(($(ls /proc/"$pid"/fd | wc -l) - fd0)) -ge "$n" ] && break
	sleep 0.1
done
sleep 1
snapshot "$tmp/after.json"
held=$(($(ls /proc/"$pid"/fd | wc -l) - fd0))
kill "$lpid" 2>/dev/null
wait "$lpid" 2>/dev/null
/usr/bin/python3 - "$tmp/before.json" "$tmp/after.json" "$held" <<'PY'
import json, sys
def load(p):
    j = json.load(open(p))["jemalloc"]
    a = j["stats.arenas"]["merged"]
    cls = {}
    for i, b in enumerate(a["bins"]):
        cls[j["arenas"]["bin"][i]["size"]] = b["curregs"]
    for i, l in enumerate(a["lextents"]):
        cls[j["arenas"]["lextent"][i]["size"]] = l["curlextents"]
    return cls, a["resident"], a["small"]["allocated"] + a["large"]["allocated"]
b, rb, ab = load(sys.argv[1])
a, ra, aa = load(sys.argv[2])
n = int(sys.argv[3])
print(f"connections held: {n} (server descriptors added)")
print("| size class B | allocations per conn | bytes per conn |")
print("|---:|---:|---:|")
tot = 0
for size in sorted(a):
    d = a[size] - b.get(size, 0)
    if d and abs(d) / n >= 0.05:
        print(f"| {size} | {d / n:.2f} | {d * size / n:,.0f} |")
        tot += d * size
print(f"| total | | {tot / n:,.0f} |")
print(f"jemalloc allocated: {(aa - ab) / n:,.0f} B per conn; jemalloc resident: {(ra - rb) / n:,.0f} B per conn (pages jemalloc counts as resident; VmRSS counts only touched ones)")
PY
