# smoke_lib.sh - sourced by the bench smoke tests (bash): a ringmail on free
# high ports. The caller sets $tmp and $ringmail and traps EXIT to kill $pid.

# free_offset: a --port-offset at which none of the default listeners'
# ports answers (random in 20000..39999, 50 tries).
free_offset() {
	local off p busy
	for _ in $(seq 50); do
		off=$((20000 + RANDOM % 20000))
		busy=0
		for p in 465 587 25 26 2025 2525 993 143 995 110 80 443; do
			if (exec 3<>"/dev/tcp/127.0.0.1/$((p + off))") 2>/dev/null; then busy=1; break; fi
		done
		[ $busy = 0 ] && { echo "$off"; return; }
	done
	return 1
}

# start_ringmail NAME [serve options...]: serves $tmp/data on a free offset
# (sets $off and $pid), trying another offset when a port was taken between
# the check and the bind. Exits 77 when io_uring is unavailable, 1 when
# ringmail does not start.
start_ringmail() {
	local name=$1 started=0
	shift
	for _try in 1 2 3 4 5; do
		off=$(free_offset) || { echo "$name: no free ports" >&2; exit 1; }
		"$ringmail" serve --data "$tmp/data" --port-offset "$off" --threads 1 --log-level warn \
			"$@" 2>"$tmp/err.log" &
		pid=$!
		for _ in $(seq 100); do
			(exec 3<>"/dev/tcp/127.0.0.1/$((995 + off))") 2>/dev/null && { started=1; break; }
			if ! kill -0 "$pid" 2>/dev/null; then
				if grep -qi "io_uring is unavailable" "$tmp/err.log"; then
					echo "$name: io_uring unavailable, skipping" >&2
					exit 77
				fi
				break
			fi
			sleep 0.1
		done
		[ $started = 1 ] && return 0
		wait "$pid" 2>/dev/null
		pid=
		grep -q "already in use" "$tmp/err.log" || { cat "$tmp/err.log" >&2; exit 1; }
	done
	cat "$tmp/err.log" >&2
	exit 1
}
