#!/bin/bash
# compare_smoke.sh RINGMAIL - bench/compare's own test (meson suite 'bench'):
# `bench/compare --smoke` (ringmail only, the IMAP login/fetch and idle cases,
# the crypto bound and durable SMTP on 465 with TLS and AUTH, half-second
# runs) into a temporary directory, then checks that every case produced a
# measured run with no error, the idle cases held every connection, every
# acknowledged SMTP message is in a mailbox, and the report printed its
# tables. Exit 77 (skip) without root, a writable cgroup v2 or io_uring.
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
out=$(mktemp -d /tmp/compare-smoke.XXXXXX)
trap 'rm -rf "$out"' EXIT
"$here/compare" --smoke --build "$build" --ringmail "$ringmail" --out "$out" >"$out/report.md" 2>"$out/err"
rc=$?
if [ $rc != 0 ]; then
	grep -q "io_uring unavailable" "$out/err" && { echo "compare_smoke: no io_uring, skipping" >&2; exit 77; }
	cat "$out/err" >&2
	exit 1
fi
cat "$out/report.md"
/usr/bin/python3 - "$out/results/latest.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
meas = [r for r in rows if r["run"] > 0]
want = {"imap-login-143", "imap-login-993", "imap-login-143-c2", "imap-fetch-993",
        "idle-143-greet", "idle-143-idle", "idle-993-idle", "crypto",
        "smtp-durable-465-auth-4k-x2"}
got = {r["case"] for r in meas}
bad = []
if want - got:
    bad.append(f"cases missing: {sorted(want - got)}")
for r in meas:
    if r["case"] == "crypto":
        if not r.get("aes128gcm_MBps", 0) > 0:
            bad.append("crypto: no AES-GCM figure")
        continue
    if r.get("errors_total", 1) != 0 or not r.get("ops", 0) > 0:
        bad.append(f"{r['case']}: ops {r.get('ops')} errors {r.get('errors')}")
    if r["case"].startswith("idle") and (r.get("held") != r.get("clients")
                                         or "vmrss_b_per_conn" not in r):
        bad.append(f"{r['case']}: held {r.get('held')} of {r.get('clients')}")
    if r["case"].startswith("smtp") and r.get("ops") != r.get("acked"):
        bad.append(f"{r['case']}: {r.get('ops')} in the mailbox, {r.get('acked')} acknowledged")
    if r["case"].startswith("imap-login") and r.get("flags_per_cycle") != 5:
        bad.append(f"{r['case']}: {r.get('flags_per_cycle')} FLAGS per cycle, want 5")
if bad:
    sys.exit("compare_smoke: " + "; ".join(bad))
print(f"compare_smoke: {len(meas)} measured runs, all cases present, no errors")
PY
