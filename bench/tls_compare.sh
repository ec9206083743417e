#!/bin/bash
# tls_compare.sh - TLS handshakes and bulk RETR against the crypto bound.
#
# Starts ringmail (--threads 1 --log-level warn) pinned to one core, in its
# own cgroup v2 when one can be made (CPU from cpu.stat, else /proc/PID/stat),
# delivers one SIZE MB message, and runs tls_bench pinned to the other core,
# RUNS times, interleaved: on 465, 993 and 995 the plaintext greet cycle on
# the same protocol's plaintext port (25, 143, 110: the baseline), full TLS
# 1.3 handshakes (X25519, the generated ECDSA P-256 certificate), resumed
# ones (psk_dhe_ke, and psk_ke), a P-256 key share on 993, TLS 1.2 full and
# resumed on 993; then RETR of the big message over 995. The crypto bound is
# tls_bench --crypto (CPU time, same wolfCrypt build) and wolfCrypt's own
# benchmark (wall time) on the server's core. Prints markdown tables of
# medians; --raw FILE keeps every JSON line.
#
# usage: bench/tls_compare.sh [--ringmail PATH] [--build DIR] [--runs N] [-d SECS]
#                             [-c N] [--size MB] [--server-cpu N] [--load-cpu N]
#                             [--raw FILE]
set -u
here=$(cd "$(dirname "$0")" && pwd)
build=$here/../build-tlstest
ringmail=
runs=5
duration=3
clients=4
size=50
server_cpu=1
load_cpu=0
raw=
while [ $# -gt 0 ]; do
	case $1 in
	--ringmail) ringmail=$2; shift ;;
	--build) build=$2; shift ;;
	--runs) runs=$2; shift ;;
	-d) duration=$2; shift ;;
	-c) clients=$2; shift ;;
	--size) size=$2; shift ;;
	--server-cpu) server_cpu=$2; shift ;;
	--load-cpu) load_cpu=$2; shift ;;
	--raw) raw=$2; shift ;;
	-h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "tls_compare.sh: unknown option $1" >&2; exit 1 ;;
	esac
	shift
done
ringmail=${ringmail:-$build/app/ringmail}
bench=$build/bench/tls_bench
for b in "$ringmail" "$bench"; do
	[ -x "$b" ] || { echo "tls_compare.sh: $b missing (meson setup $build && ninja -C $build)" >&2; exit 1; }
done
wcb=/var/cache/ringmail/wolfssl/bin/wolfcrypt-benchmark
pin_s=(taskset -c "$server_cpu")
pin_l=(taskset -c "$load_cpu")

tmp=$(mktemp -d /tmp/tlsbench.XXXXXX)
pid=
cg=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	if [ -n "$cg" ]; then for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done; fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

off=
for _ in $(seq 50); do
	# Every port ringmail listens on lands under 32768, below the
	# kernel's ephemeral range, where the clients' own sockets (tens of
	# thousands per run, in TIME_WAIT) would collide with the listeners.
	o=$((10000 + RANDOM % 19000)) busy=0
	for p in 25 26 80 110 143 443 465 587 993 995 2025 2525; do
		(exec 3<>"/dev/tcp/127.0.0.1/$((p + o))") 2>/dev/null && { busy=1; break; }
	done
	[ $busy = 0 ] && { off=$o; break; }
done
[ -n "$off" ] || { echo "tls_compare.sh: no free ports" >&2; exit 1; }

user=bench@example.com pass='bench pass 1'
printf '%s\n' "$pass" | "$ringmail" user add "$user" --data "$tmp/data" >/dev/null || exit 1
cat >"$tmp/ringmail.conf" <<CONF
[server]
hostname = mail.example.com
[limits]
max_connections_per_ip = 100000
message_size_max = $((size * 2))m
CONF
"${pin_s[@]}" "$ringmail" serve --config "$tmp/ringmail.conf" --data "$tmp/data" \
	--port-offset "$off" --threads 1 --log-level warn 2>"$tmp/err.log" &
pid=$!
for _ in $(seq 100); do
	(exec 3<>"/dev/tcp/127.0.0.1/$((995 + off))") 2>/dev/null && break
	kill -0 "$pid" 2>/dev/null || { cat "$tmp/err.log" >&2; exit 1; }
	sleep 0.1
done
cpuopt=(--server-pid "$pid")
for d in /sys/fs/cgroup /sys/fs/cgroup/unified; do
	if [ -f "$d/cgroup.procs" ] && [ -f "$d/cgroup.controllers" ]; then
		if mkdir "$d/tlsbench-$$" 2>/dev/null && echo "$pid" >"$d/tlsbench-$$/cgroup.procs" 2>/dev/null; then
			cg=$d/tlsbench-$$
			cpuopt=(--server-cgroup "$cg")
		else
			rmdir "$d/tlsbench-$$" 2>/dev/null
		fi
		break
	fi
done

# The big message, over plaintext SMTP on 25 (local delivery).
python3 - "$((25 + off))" "$user" "$size" <<'PY' || exit 1
import smtplib, sys
port, user, mb = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
body = line * (mb * 1000000 // len(line))
msg = b"From: a@remote.example\r\nTo: " + user.encode() + b"\r\nSubject: big\r\n\r\n" + body
with smtplib.SMTP("127.0.0.1", port, timeout=300) as s:
    s.sendmail("a@remote.example", [user], msg)
PY

out=$tmp/raw.jsonl
echo "# crypto" >&2
for _ in 1 2 3; do
	"${pin_s[@]}" "$bench" --crypto --secs 1 --json | sed 's/^{/{"kind":"crypto",/' >>"$out"
done
if [ -x "$wcb" ]; then
	"${pin_s[@]}" "$wcb" -ecc -p256 -curve25519-kg -x25519 -aes-gcm >"$tmp/wcb.txt" 2>&1
	cat "$tmp/wcb.txt" >&2
fi

one() { # label args...
	local label=$1; shift
	local j
	j=$("${pin_l[@]}" "$bench" --json "${cpuopt[@]}" "$@" 2>>"$tmp/bench.err") ||
		echo "tls_compare.sh: $label: $* failed: $(tail -1 "$tmp/bench.err")" >&2
	[ -n "$j" ] && echo "{\"label\":\"$label\",${j#\{}" >>"$out"
	echo "$label $j" >&2
}
for r in $(seq "$runs"); do
	echo "# run $r" >&2
	for port in 465 993 995; do
		case $port in 465) pl=25 ;; 993) pl=143 ;; 995) pl=110 ;; esac
		p=$((port + off))
		one "$port plain($pl)" --port $((pl + off)) --mode plain -c "$clients" -d "$duration"
		one "$port full" --port $p --mode full -c "$clients" -d "$duration"
		one "$port resume" --port $p --mode resume -c "$clients" -d "$duration"
		one "$port resume-psk" --port $p --mode resume-psk -c "$clients" -d "$duration"
	done
	one "993 full p256" --port $((993 + off)) --mode full --group p256 -c "$clients" -d "$duration"
	one "993 full tls12" --port $((993 + off)) --mode full --tls12 -c "$clients" -d "$duration"
	one "993 resume tls12" --port $((993 + off)) --mode resume --tls12 -c "$clients" -d "$duration"
	one "995 retr" --port $((995 + off)) --mode retr --user "$user" --pass "$pass" -d "$duration"
done
[ -n "$raw" ] && cp "$out" "$raw"

python3 - "$out" "$tmp/wcb.txt" <<'PY'
import json, re, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: st.median(xs) if xs else float("nan")
cr = [r for r in rows if r.get("kind") == "crypto"]
c = {k: med([r[k] for r in cr]) for k in cr[0] if isinstance(cr[0][k], (int, float))}
print("Crypto bound (tls_bench --crypto, CPU time, median of 3):")
print(f"  ECDSA P-256 sign {c['ecdsa_p256_sign_us']:.1f} us, X25519 keygen {c['x25519_keygen_us']:.1f} us, "
      f"agree {c['x25519_agree_us']:.1f} us -> full {c['bound_full_us']:.1f} us, "
      f"resumed (psk_dhe_ke) {c['bound_resume_dhe_us']:.1f} us; AES-128-GCM {c['aes128gcm_MBps']:.0f} MB/s; "
      f"wc_InitRng {c['rng_init_us']:.1f} us; SHA-256 1 KiB {c.get('sha256_1k_us', float('nan')):.2f} us "
      f"({cr[0].get('sha256_impl', '?')}, not in the bound)")
w = {}
try:
    for l in open(sys.argv[2]):
        m = re.search(r"(SECP256R1\]\s+256\s+sign|25519\s+key gen|25519\s+agree|ECDHE.*agree|AES-128-GCM-enc|AES-128-GCM-dec).*?([\d.]+) (ops/sec|MiB/s)", l)
        if m:
            w[re.sub(r"\s+", " ", m.group(1))] = float(m.group(2))
    sign = 1e6 / w["SECP256R1] 256 sign"]; kg = 1e6 / w["25519 key gen"]; ag = 1e6 / w["25519 agree"]
    print(f"wolfcrypt-benchmark (wall time): sign {sign:.1f} us, keygen {kg:.1f} us, agree {ag:.1f} us "
          f"-> full {sign+kg+ag:.1f} us, resumed {kg+ag:.1f} us; AES-128-GCM enc {w['AES-128-GCM-enc']:.0f} MiB/s")
except (KeyError, OSError) as e:
    print("wolfcrypt-benchmark figures unavailable:", e)
print()
hs = [r for r in rows if "label" in r and r["mode"] != "retr"]
labels = list(dict.fromkeys(r["label"] for r in hs))
def m(label, key):
    return med([r[key] for r in hs if r["label"] == label])
print("| port | mode | conns/s | server CPU us/conn | user us/conn | minus plain greet | bound us | bound / handshake | reused | p50 / p99 / p999 us | client us/conn | other load % | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
for lb in labels:
    port, mode = lb.split(" ", 1)
    base = next((x for x in labels if x.startswith(port + " plain")), None)
    cpu = m(lb, "server_cpu_us_per_conn")
    errs = sum(r["errors_total"] for r in hs if r["label"] == lb)
    reused = sum(r["reused"] for r in hs if r["label"] == lb); conns = sum(r["conns"] for r in hs if r["label"] == lb)
    if mode.startswith("plain"):
        extra, bound, ratio = "", "", ""
    else:
        hcpu = cpu - m(base, "server_cpu_us_per_conn")
        b = c["bound_full_us"] if "full" in mode else (c["bound_resume_dhe_us"] if mode == "resume" else None)
        if "tls12" in mode and "resume" in mode:
            b = None
        if "p256" in mode:
            b = None
        extra = f"{hcpu:.1f}"
        bound = f"{b:.1f}" if b else "-"
        ratio = f"{b / hcpu:.2f}" if b else "-"
    print(f"| {port} | {mode} | {m(lb, 'conns_per_s'):.0f} | {cpu:.1f} | {m(lb, 'server_user_us_per_conn'):.1f} | {extra} | {bound} | {ratio} | "
          f"{reused}/{conns} | {m(lb, 'p50_us'):.0f} / {m(lb, 'p99_us'):.0f} / {m(lb, 'p999_us'):.0f} | "
          f"{m(lb, 'client_cpu_us_per_conn'):.1f} | {m(lb, 'other_cpu_pct'):.1f} | {errs} |")
rr = [r for r in rows if r.get("mode") == "retr"]
if rr:
    print()
    print("| RETR over 995 | MB/s | server CPU us/MB | MB per server CPU s | client us/MB | AES-128-GCM MB/s (crypto) | other load % |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    cpu = med([r["server_cpu_us_per_MB"] for r in rr])
    print(f"| {rr[0]['MB'] / max(rr[0]['retrs'], 1):.1f} MB message | {med([r['MBps'] for r in rr]):.0f} | {cpu:.0f} | "
          f"{1e6 / cpu:.0f} | {med([r['client_cpu_us_per_MB'] for r in rr]):.0f} | {c['aes128gcm_MBps']:.0f} | "
          f"{med([r['other_cpu_pct'] for r in rr]):.1f} |")
PY
