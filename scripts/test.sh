#!/bin/sh
# test.sh - install what is missing, build, and run the whole test suite
# (Criterion unit tests, integration tests against the real binary with real
# clients, the bench smoke tests) in up to three runs, as CI does:
#   1. BUILD_DIR (build/): the debugoptimized build.
#   2. build-asan/: the same suite, built with -fsanitize=address,undefined;
#      any ASan, LSan or UBSan report fails (see "sanitizers" below).
#   3. build-fuzz/ (clang): suite 'fuzz', every libFuzzer target fuzzing its
#      committed corpus for RINGMAIL_FUZZ_SECONDS (default 45); a crash fails
#      and its input is printed (tests/fuzz/run.sh).
# Prints "N passed, N failed, N skipped" summed over the runs.
#   BUILD_DIR                  the first run's build directory (default: build)
#   RINGMAIL_TEST_SANITIZE=0   skip run 2 (quick local runs; CI runs it)
#   RINGMAIL_TEST_FUZZ=0       skip run 3 (CI runs it)
#   RINGMAIL_ASAN_TIMEOUT_MULTIPLIER  meson's per-test timeouts in run 2 (3)
# Arguments go to `meson test` in runs 1 and 2 (e.g. a test name or
# --suite unit); run 3 then runs only with RINGMAIL_TEST_FUZZ=1.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh test
sh scripts/build.sh
dir=${BUILD_DIR:-build}
asan=build-asan
fuzz=build-fuzz
sanitize=${RINGMAIL_TEST_SANITIZE:-1}
if [ $# -gt 0 ]; then
	dofuzz=${RINGMAIL_TEST_FUZZ:-0}
else
	dofuzz=${RINGMAIL_TEST_FUZZ:-1}
fi
# Many concurrent connections in the tests: lift the descriptor limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

now() { date +%s; }
rc=0
logs=""

t0=$(now)
rm -f "$dir/meson-logs/testlog.json"
meson test -C "$dir" --print-errorlogs --num-processes 2 "$@" || rc=$?
echo "test.sh: run 1 ($dir): $(($(now) - t0)) s"
logs="$logs $dir/meson-logs/testlog.json"

if [ "$sanitize" != 0 ]; then
	# Sanitizers: every report is fatal. halt_on_error stops the process at
	# the first ASan or UBSan report (a server dies, so its test fails on the
	# exit code or the lost connection). LeakSanitizer runs at exit: a server
	# with a leak exits 23, which the integration fixture refuses. Criterion
	# counts a test whose worker leaks at exit as passed, so the summary
	# below also fails any test whose output holds a sanitizer report.
	# The bundled static wolfSSL is not instrumented.
	t0=$(now)
	BUILD_DIR=$asan MESON_ARGS="-Db_sanitize=address,undefined -Db_lundef=false" \
		sh scripts/build.sh
	rm -f "$asan/meson-logs/testlog.json"
	ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:abort_on_error=0} \
	UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
	RINGMAIL_TEST_UBSAN_STRICT=1 \
		meson test -C "$asan" --print-errorlogs --num-processes 2 \
		--timeout-multiplier "${RINGMAIL_ASAN_TIMEOUT_MULTIPLIER:-3}" "$@" || rc=$?
	echo "test.sh: run 2 ($asan): $(($(now) - t0)) s"
	logs="$logs sanitized:$asan/meson-logs/testlog.json"
fi

if [ "$dofuzz" != 0 ]; then
	# Only the fuzz targets are built with clang, not the whole tree.
	t0=$(now)
	if [ ! -f "$fuzz/build.ninja" ]; then
		CC=clang meson setup "$fuzz" --buildtype=debugoptimized -Dfuzz=true
	fi
	ninja -C "$fuzz" fuzz-targets
	rm -f "$fuzz/meson-logs/testlog.json"
	meson test -C "$fuzz" --no-rebuild --print-errorlogs --num-processes 2 \
		--suite fuzz || rc=$?
	echo "test.sh: run 3 ($fuzz): $(($(now) - t0)) s"
	logs="$logs $fuzz/meson-logs/testlog.json"
fi

# shellcheck disable=SC2086
python3 - $logs <<'PY' || rc=$?
import json, sys
counts = {"OK": 0, "FAIL": 0, "SKIP": 0, "TIMEOUT": 0, "EXPECTEDFAIL": 0, "UNEXPECTEDPASS": 0, "ERROR": 0}
# A sanitizer report in a passing test's output (Criterion ignores a worker
# that leaks after its test passed) fails it.
MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
flipped = []
for arg in sys.argv[1:]:
    sanitized = arg.startswith("sanitized:")
    path = arg.split(":", 1)[1] if sanitized else arg
    try:
        with open(path) as f:
            for line in f:
                t = json.loads(line)
                r = t.get("result", "")
                out = (t.get("stdout") or "") + (t.get("stderr") or "")
                if sanitized and r == "OK" and any(m in out for m in MARKERS):
                    r = "FAIL"
                    flipped.append(t.get("name", "?"))
                counts[r] = counts.get(r, 0) + 1
    except FileNotFoundError:
        pass
for name in flipped:
    print(f"test.sh: {name}: passed, but its output holds a sanitizer report: FAIL")
failed = counts["FAIL"] + counts["TIMEOUT"] + counts["UNEXPECTEDPASS"] + counts["ERROR"]
print(f"{counts['OK'] + counts['EXPECTEDFAIL']} passed, {failed} failed, {counts['SKIP']} skipped")
sys.exit(1 if flipped else 0)
PY
exit $rc
