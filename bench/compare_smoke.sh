#!/bin/bash
# compare_smoke.sh RINGMAIL - bench/compare's own test (meson suite 'bench'):
# `bench/compare --smoke` (ringmail and the limits, no peers: every kind of
# case once, durable SMTP on 25 and on 465 with TLS and AUTH included,
# half-second runs) into a temporary directory holding a copy of
# bench/RESULTS.md, rewritten there with --results-md. Then it checks that
# every case produced a measured run with no error, latency percentiles
# (p50/p99/p999), errors by kind and the server's CPU per operation; that
# every resumed TLS connection resumed, the idle cases held every connection,
# each login cycle saw the mailbox's FLAGS and every acknowledged SMTP
# message (on 25 and on 465) is in a mailbox; that the copy of RESULTS.md
# has one block between the bench/compare markers, with the tables, the
# hand-written text around it kept, and the two PNG plots made beside it
# (gnuplot: scripts/deps.sh test). Exit 77 (skip) without root, a writable
# cgroup v2 or io_uring.
set -u
ringmail=$1
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$(dirname "$ringmail")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "compare_smoke: not root, skipping" >&2; exit 77; }
cg=
for d in /sys/fs/cgroup /sys/fs/cgroup/unified; do
	[ -f "$d/cgroup.procs" ] && [ -f "$d/cgroup.controllers" ] && cg=$d && break
done
[ -n "$cg" ] && mkdir "$cg/compare-smoke-probe-$$" 2>/dev/null && rmdir "$cg/compare-smoke-probe-$$" ||
	{ echo "compare_smoke: no writable cgroup v2, skipping" >&2; exit 77; }
command -v gnuplot >/dev/null ||
	{ echo "compare_smoke: gnuplot missing (scripts/deps.sh test installs gnuplot-nox)" >&2; exit 1; }
out=$(mktemp -d /tmp/compare-smoke.XXXXXX)
trap 'rm -rf "$out"' EXIT
cp "$here/RESULTS.md" "$out/RESULTS.md"
"$here/compare" --smoke --results-md --build "$build" --ringmail "$ringmail" --out "$out" \
	>"$out/report.md" 2>"$out/err"
rc=$?
if [ $rc != 0 ]; then
	grep -q "io_uring unavailable" "$out/err" && { echo "compare_smoke: no io_uring, skipping" >&2; exit 77; }
	cat "$out/err" >&2
	exit 1
fi
cat "$out/report.md"
/usr/bin/python3 - "$out/results/latest.jsonl" "$here/RESULTS.md" "$out" <<'PY'
import json, os, re, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
meas = [r for r in rows if r["run"] > 0]
want = {("floor", "greet-smtp"), ("loopfloor", "greet-smtp"), ("ringmail", "greet-smtp"),
        ("ringmail", "greet-imap"), ("ringmail", "greet-pop3"),
        ("ringmail", "tls-full-465"), ("ringmail", "tls-resume-465"),
        ("ringmail", "imap-login-143"), ("ringmail", "imap-login-993"),
        ("ringmail", "imap-login-143-c2"), ("ringmail", "imap-fetch-993"),
        ("ringmail", "pop3-retr-110"), ("ringmail", "smtp-durable-4k-x4"),
        ("ringmail", "smtp-durable-465-auth-4k-x2"),
        ("ringmail", "idle-143-greet"), ("ringmail", "idle-143-idle"),
        ("ringmail", "idle-993-idle"), ("bound", "crypto"),
        ("tlsfloor", "imap-login-143"), ("tlsfloor", "imap-login-993"),
        ("tlsfloor", "imap-fetch-993")}
got = {(r["server"], r["case"]) for r in meas}
bad = []
if want - got:
    bad.append(f"cases missing: {sorted(want - got)}")
for r in meas:
    c = r["case"]
    if c == "crypto":
        if not r.get("aes128gcm_MBps", 0) > 0 or not r.get("bound_full_us", 0) > 0:
            bad.append("crypto: no AES-GCM or handshake bound figure")
        continue
    ops = r.get("ops", r.get("conns"))  # ringload says conns, and has no errors_total
    kinds = r.get("errors") if isinstance(r.get("errors"), dict) else {}
    if r.get("errors_total", sum(kinds.values()) if kinds else 1) != 0 or not (ops or 0) > 0:
        bad.append(f"{r['server']} {c}: ops {ops} errors {r.get('errors')}")
    if not isinstance(r.get("errors"), dict) or sum(r["errors"].values()) != 0:
        bad.append(f"{r['server']} {c}: no errors by kind ({r.get('errors')})")
    if not all(isinstance(r.get(k), int) and r[k] > 0 for k in ("p50_us", "p99_us", "p999_us")) \
            or not r["p50_us"] <= r["p99_us"] <= r["p999_us"]:
        bad.append(f"{r['server']} {c}: latency {r.get('p50_us')}/{r.get('p99_us')}/{r.get('p999_us')}")
    if not c.startswith("idle") and r.get("server_cpu_us_per_op", r.get("server_cpu_us_per_conn")) is None:
        bad.append(f"{r['server']} {c}: no server CPU per operation")
    if c.startswith("tls-resume") and r.get("reused") != r.get("conns"):
        bad.append(f"{c}: {r.get('reused')} of {r.get('conns')} connections resumed")
    if c.startswith("idle") and (r.get("held") != r.get("clients") or "vmrss_b_per_conn" not in r):
        bad.append(f"{c}: held {r.get('held')} of {r.get('clients')}")
    if c.startswith("imap-login") and r.get("flags_per_cycle") != 5:
        bad.append(f"{c}: {r.get('flags_per_cycle')} FLAGS per cycle, want 5")
    if c.startswith("smtp-durable") and r.get("acked") != r.get("ops"):
        bad.append(f"{c}: {r.get('acked')} acknowledged, {r.get('ops')} in the mailbox")
# RESULTS.md: one generated block, the hand-written text around it kept
orig, md = open(sys.argv[2]).read(), open(os.path.join(sys.argv[3], "RESULTS.md")).read()
BEGIN, END = "<!-- bench/compare:begin", "<!-- bench/compare:end -->"
if md.count(BEGIN) != 1 or md.count(END) != 1 or md.index(BEGIN) > md.index(END):
    bad.append("RESULTS.md: not one pair of bench/compare markers")
else:
    i, j = md.index(BEGIN), md.index(END) + len(END)
    oi, oj = orig.index(BEGIN), orig.index(END) + len(END)
    if md[:i] != orig[:oi] or md[j:] != orig[oj:]:
        bad.append("RESULTS.md: text outside the markers changed")
    block = md[i:j]
    if "bench/compare --smoke" not in block:
        bad.append("RESULTS.md: the block does not name the command")
    # every row of the all-cases table (the one headed "| case | server |";
    # the ratio tables after it show "-" where a server is missing) has its
    # latency columns
    in_all = False
    for line in block.splitlines():
        if line.startswith("| case | server |"):
            in_all = True
            continue
        if not line.startswith("|"):
            in_all = False
        m = re.match(r"\| ([a-z0-9-]+) \| [^|]+ \| [^|]+ \| [^|]+ \| ([^|]+) \| ([^|]+) \| ([^|]+) \|", line)
        if in_all and m and "-" in (m.group(2).strip(), m.group(3).strip(), m.group(4).strip()):
            bad.append(f"RESULTS.md: no latency in: {line[:80]}")
    for png in ("compare-rate-vs-concurrency.png", "compare-latency.png"):
        path = os.path.join(sys.argv[3], png)
        if f"]({png})" not in block:
            bad.append(f"RESULTS.md: {png} not shown")
        if not os.path.exists(path) or open(path, "rb").read(8) != b"\x89PNG\r\n\x1a\n":
            bad.append(f"{png}: not made")
if bad:
    sys.exit("compare_smoke: " + "; ".join(bad))
print(f"compare_smoke: {len(meas)} measured runs, all cases present, no errors, "
      "RESULTS.md rewritten between its markers, plots made")
PY
