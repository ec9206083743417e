#!/bin/sh
# test.sh - install what is missing, build, and run the whole test suite
# (Criterion unit tests, integration tests against the real binary with real
# clients, the bench smoke test). Prints "N passed, N failed, N skipped".
#   BUILD_DIR  the build directory (default: build)
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh test
sh scripts/build.sh
dir=${BUILD_DIR:-build}
# Many concurrent connections in the tests: lift the descriptor limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
rc=0
meson test -C "$dir" --print-errorlogs --num-processes 2 "$@" || rc=$?
python3 - "$dir/meson-logs/testlog.json" <<'PY'
import json, sys
counts = {"OK": 0, "FAIL": 0, "SKIP": 0, "TIMEOUT": 0, "EXPECTEDFAIL": 0, "UNEXPECTEDPASS": 0, "ERROR": 0}
try:
    with open(sys.argv[1]) as f:
        for line in f:
            r = json.loads(line).get("result", "")
            counts[r] = counts.get(r, 0) + 1
except FileNotFoundError:
    pass
failed = counts["FAIL"] + counts["TIMEOUT"] + counts["UNEXPECTEDPASS"] + counts["ERROR"]
print(f"{counts['OK'] + counts['EXPECTEDFAIL']} passed, {failed} failed, {counts['SKIP']} skipped")
PY
exit $rc
