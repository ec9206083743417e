#!/bin/bash
# compare.sh - greeting cost of ringmail against the kernel floor.
#
# Starts floor-server and (with --ringmail) ringmail, each pinned to one core,
# and runs ringload's greet scenario against them from another core, RUNS
# times each, interleaved (floor, ringmail, floor, ...) so drift hits both.
# Prints the medians of conns/s, server CPU us per connection and latency,
# and the ratio ringmail/floor of the CPU per connection (the issue's goal:
# at most 1.3) and of conns/s.
#
# The server's CPU is read from a cgroup v2 made for it when one can be
# created (cpu.stat usage_usec: every thread and child, microsecond
# precision), else from /proc/PID/stat (clock ticks). See docs/bench.md.
#
# usage: bench/compare.sh [--ringmail PATH] [options]
#   --ringmail PATH       ringmail binary; without it only the floor is measured
#   --ringmail-args ARGS  extra arguments for "ringmail serve"
#   --port-offset N       ringmail's --port-offset (10000: SMTP on 10025)
#   --protos LIST         ringmail greetings to measure: smtp,imap,pop3 (smtp)
#   --runs N              runs per server (5)
#   -c N                  concurrent clients (64)
#   -d SECS               seconds per run (5)
#   --build DIR           build dir holding bench/ringload (build-bench)
#   --server-cpu N        core for the servers (1)
#   --load-cpu N          core for ringload (0)
#   --raw FILE            also append every JSON line to FILE
#   --max-other PCT       repeat a run when other tenants used more than PCT %
#                         of a core meanwhile (10)
#   --retries N           at most N repeats per run (3)
set -u

here=$(cd "$(dirname "$0")" && pwd)
build=$here/../build-bench
ringmail=
ringmail_args=
offset=10000
protos=smtp
runs=5
clients=64
duration=5
server_cpu=1
load_cpu=0
raw=
max_other=10
retries=3

while [ $# -gt 0 ]; do
	case $1 in
	--ringmail) ringmail=$2; shift ;;
	--ringmail-args) ringmail_args=$2; shift ;;
	--port-offset) offset=$2; shift ;;
	--protos) protos=$2; shift ;;
	--runs) runs=$2; shift ;;
	-c) clients=$2; shift ;;
	-d) duration=$2; shift ;;
	--build) build=$2; shift ;;
	--server-cpu) server_cpu=$2; shift ;;
	--load-cpu) load_cpu=$2; shift ;;
	--raw) raw=$2; shift ;;
	--max-other) max_other=$2; shift ;;
	--retries) retries=$2; shift ;;
	-h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "compare.sh: unknown option $1" >&2; exit 1 ;;
	esac
	shift
done

ringload=$build/bench/ringload
floor=$build/bench/floor-server
for b in "$ringload" "$floor"; do
	[ -x "$b" ] || { echo "compare.sh: $b missing: meson setup build-bench && ninja -C build-bench" >&2; exit 1; }
done
if [ -n "$ringmail" ] && [ ! -x "$ringmail" ]; then
	echo "compare.sh: $ringmail is not an executable" >&2
	exit 1
fi

pin_server=()
pin_load=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
	pin_server=(taskset -c "$server_cpu")
	pin_load=(taskset -c "$load_cpu")
else
	echo "compare.sh: fewer than 2 cores or no taskset: not pinning" >&2
fi

tmp=$(mktemp -d /tmp/ringbench.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
	done
	# A reaped task can linger in its cgroup for a moment: retry rmdir.
	[ -f "$tmp/cgroups" ] && while read -r cg; do
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			rmdir "$cg" 2>/dev/null && break
			sleep 0.1
		done
	done <"$tmp/cgroups"
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A writable cgroup v2 hierarchy: the unified one, or its hybrid mount.
cgroot=
for d in /sys/fs/cgroup /sys/fs/cgroup/unified; do
	if [ -f "$d/cgroup.procs" ] && [ -f "$d/cgroup.controllers" ]; then
		cgroot=$d
		break
	fi
done

# cpu_source NAME PID: the ringload option that reads PID's CPU; moves PID
# into a fresh cgroup when it can. It runs in $(...): it records the cgroup in
# $tmp/cgroups for cleanup, not in a variable.
cpu_source() {
	local name=$1 pid=$2 cg
	if [ -n "$cgroot" ]; then
		cg=$cgroot/ringbench-$name-$$
		if mkdir "$cg" 2>/dev/null && echo "$pid" >"$cg/cgroup.procs" 2>/dev/null; then
			echo "$cg" >>"$tmp/cgroups"
			echo "--server-cgroup $cg"
			return
		fi
		rmdir "$cg" 2>/dev/null
	fi
	echo "--server-pid $pid"
}

# wait_port PORT PID: until PORT accepts a connection (10 s at most).
wait_port() {
	local port=$1 pid=$2
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || return 1
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# Servers: name port cpu-option, one per line in $tmp/servers.
"${pin_server[@]}" "$floor" --port 0 >"$tmp/floor.out" 2>"$tmp/floor.err" &
floor_pid=$!
pids+=("$floor_pid")
floor_port=
for _ in $(seq 50); do
	floor_port=$(awk '/^listening/ { print $3 }' "$tmp/floor.out")
	[ -n "$floor_port" ] && break
	sleep 0.1
done
if [ -z "$floor_port" ]; then
	echo "compare.sh: floor-server did not start:" >&2
	cat "$tmp/floor.err" >&2
	exit 1
fi
echo "floor $floor_port smtp $(cpu_source floor "$floor_pid")" >"$tmp/servers"

if [ -n "$ringmail" ]; then
	# Someone else's server on these ports (SO_REUSEPORT lets a second one
	# bind) would take part of the load or all of it: refuse to measure.
	for p in $((25 + offset)) $((143 + offset)) $((110 + offset)); do
		if ss -ltnH "sport = :$p" 2>/dev/null | grep -q .; then
			echo "compare.sh: port $p is already in use; pick another --port-offset" >&2
			exit 1
		fi
	done
	mkdir "$tmp/data"
	# shellcheck disable=SC2086 # ringmail_args is a list of words
	"${pin_server[@]}" "$ringmail" serve --port-offset "$offset" --data "$tmp/data" \
		--threads 1 $ringmail_args >"$tmp/ringmail.out" 2>"$tmp/ringmail.err" &
	rm_pid=$!
	pids+=("$rm_pid")
	if ! wait_port $((25 + offset)) "$rm_pid"; then
		echo "compare.sh: ringmail did not listen on $((25 + offset)):" >&2
		tail -20 "$tmp/ringmail.err" >&2
		exit 1
	fi
	rm_cpu=$(cpu_source ringmail "$rm_pid")
	for p in ${protos//,/ }; do
		case $p in
		smtp) port=$((25 + offset)) ;;
		imap) port=$((143 + offset)) ;;
		pop3) port=$((110 + offset)) ;;
		*) echo "compare.sh: unknown protocol $p" >&2; exit 1 ;;
		esac
		echo "ringmail $port $p $rm_cpu" >>"$tmp/servers"
	done
fi

# One unrecorded 3 s run each: warms caches and fills the TIME_WAIT table
# (net.ipv4.tcp_max_tw_buckets) so every measured run sees it full alike.
while read -r name port proto cpuopt; do
	# shellcheck disable=SC2086 # cpuopt is "--server-xxx VALUE"
	"${pin_load[@]}" "$ringload" --port "$port" -c "$clients" -d 3 $cpuopt --json \
		>/dev/null 2>&1
done <"$tmp/servers"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
retried=0
for i in $(seq "$runs"); do
	while read -r name port proto cpuopt; do
		# A run disturbed by other tenants (other_cpu_pct above --max-other)
		# is repeated, at most --retries times; the last try counts.
		for try in $(seq 0 "$retries"); do
			# shellcheck disable=SC2086
			line=$("${pin_load[@]}" "$ringload" --port "$port" -c "$clients" \
				-d "$duration" $cpuopt --json 2>/dev/null)
			rc=$?
			if [ $rc -ne 0 ] || [ -z "$line" ]; then
				echo "compare.sh: ringload failed ($rc) against $name:$port" >&2
				exit 1
			fi
			if ! kill -0 "$floor_pid" 2>/dev/null ||
			   { [ -n "$ringmail" ] && ! kill -0 "$rm_pid" 2>/dev/null; }; then
				echo "compare.sh: a server died during run $i; its last words:" >&2
				tail -5 "$tmp/floor.err" "$tmp/ringmail.err" 2>/dev/null >&2
				exit 1
			fi
			[ -n "$raw" ] && echo "$line" >>"$raw"
			other=$(echo "$line" | sed -n 's/.*"other_cpu_pct":\([0-9.]*\).*/\1/p')
			echo "run $i $name $proto: $(echo "$line" | sed -n 's/.*"conns_per_s":\([0-9.]*\).*"server_cpu_us_per_conn":\([0-9.null]*\).*/\1 conns\/s, \2 us\/conn/p'), other load ${other:-?}%" >&2
			if [ -n "$other" ] && [ "$try" -lt "$retries" ] &&
			   awk -v o="$other" -v m="$max_other" 'BEGIN { exit !(o > m) }'; then
				retried=$((retried + 1))
				# Back off: a neighbour's build or test usually lasts a while.
				echo "  disturbed (> $max_other%): again in $duration s" >&2
				sleep "$duration"
				continue
			fi
			break
		done
		echo "$name $proto $line" >>"$tmp/results"
	done <"$tmp/servers"
done

# field NAME: the JSON number NAME of each line on stdin.
field() {
	sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"
}
median() {
	sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan";
		else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
errsum() {
	sed -n 's/.*"errors":{\([^}]*\)}.*/\1/p' | tr ',' '\n' | awk -F: '{ s += $2 } END { print s + 0 }'
}

echo
echo "greet, $clients clients, ${duration} s x $runs runs, medians (server on core $server_cpu, ringload on core $load_cpu)"
echo
echo "| server | proto | conns/s | server CPU us/conn | p50 us | p99 us | p999 us | errors | other load % |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
while read -r name port proto cpuopt; do
	sel=$(awk -v n="$name" -v p="$proto" '$1 == n && $2 == p { $1 = $2 = ""; print }' "$tmp/results")
	rate=$(echo "$sel" | field conns_per_s | median)
	cpu=$(echo "$sel" | field server_cpu_us_per_conn | median)
	p50=$(echo "$sel" | field p50_us | median)
	p99=$(echo "$sel" | field p99_us | median)
	p999=$(echo "$sel" | field p999_us | median)
	errs=$(echo "$sel" | errsum)
	other=$(echo "$sel" | field other_cpu_pct | median)
	printf '| %s | %s | %.0f | %.2f | %s | %s | %s | %s | %s |\n' "$name" "$proto" "$rate" \
		"$cpu" "$p50" "$p99" "$p999" "$errs" "$other"
	echo "$name $proto $rate $cpu" >>"$tmp/medians"
done <"$tmp/servers"

if [ -n "$ringmail" ]; then
	echo
	awk '$1 == "floor" { fr = $3; fc = $4 }
	     $1 == "ringmail" && $2 == "smtp" { rr = $3; rc = $4 }
	     END { if (fc > 0 && fr > 0)
		printf "ringmail/floor (smtp): CPU per connection %.2fx (goal <= 1.30), conns/s %.2fx\n",
			rc / fc, rr / fr }' "$tmp/medians"
else
	echo
	echo "(no --ringmail: floor only)"
fi
echo "runs repeated because of other load (> $max_other% of a core): $retried"
echo "load average before/after: $load_before / $(cut -d' ' -f1-3 /proc/loadavg)"
echo "cpu source: $(awk '{ print $1 ": " $4 }' "$tmp/servers" | sed 's/--server-//' | sort -u | tr '\n' ' ')"
