#!/bin/bash
# start.sh - starts the peer instance written by setup.sh: Dovecot, then
# Postfix, pinned to one core, optionally inside a cgroup (every process
# they fork inherits both), so the bench can sum their CPU.
#
#   bench/peers/start.sh [--dir DIR] [--cpu N] [--cgroup CGDIR]
set -eu
dir=/var/lib/ringmail-peers
cpu=
cgroup=
while [ $# -gt 0 ]; do
	case $1 in
	--dir) dir=$2; shift ;;
	--cpu) cpu=$2; shift ;;
	--cgroup) cgroup=$2; shift ;;
	*) echo "start.sh: unknown option $1" >&2; exit 1 ;;
	esac
	shift
done
[ -f "$dir/env" ] || { echo "start.sh: $dir is not set up (bench/peers/setup.sh)" >&2; exit 1; }
. "$dir/env"
if [ -n "$cgroup" ]; then
	echo $BASHPID >"$cgroup/cgroup.procs"
fi
pin=()
[ -n "$cpu" ] && pin=(taskset -c "$cpu")
"${pin[@]}" dovecot -c "$dir/dovecot/dovecot.conf"
for _ in $(seq 100); do
	[ -S "$dir/dovecot/run/lmtp" ] && break
	sleep 0.1
done
[ -S "$dir/dovecot/run/lmtp" ] || { echo "start.sh: Dovecot's lmtp socket never appeared" >&2; tail "$dir/dovecot.log" >&2; exit 1; }
"${pin[@]}" postfix -c "$dir/postfix" start >/dev/null 2>&1 ||
	{ echo "start.sh: postfix start failed" >&2; tail "$dir/postfix.log" >&2; exit 1; }
for _ in $(seq 100); do
	(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && { echo "peers up: Postfix 127.0.0.1:$PORT -> Dovecot LMTP"; exit 0; }
	sleep 0.1
done
echo "start.sh: Postfix never listened on $PORT" >&2
tail "$dir/postfix.log" >&2
exit 1
