#!/bin/sh
# run.sh - fuzz one libFuzzer target for a fixed time, starting from its
# committed seed corpus (meson suite 'fuzz', run by scripts/test.sh).
#
#   run.sh TARGET SEED_CORPUS_DIR WORK_DIR
#   RINGMAIL_FUZZ_SECONDS   fuzzing time per target (default 45)
#
# The committed corpus is only read: new inputs go to WORK_DIR/corpus-NAME
# (libFuzzer writes to the first corpus dir it is given; kept between local
# runs so coverage accumulates) and a crash, leak, timeout or OOM input to
# WORK_DIR/crashes-NAME/ (emptied at start). Any finding fails the test and
# its input is printed in base64, so it can be recreated from the CI log:
#   base64 -d > crash <<'EOF' ... EOF;  TARGET crash
set -u
target=$1 seeds=$2 work=$3
secs=${RINGMAIL_FUZZ_SECONDS:-45}
name=$(basename "$target")
out="$work/crashes-$name"
mkdir -p "$work/corpus-$name"
rm -rf "$out" && mkdir -p "$out"

# -error_exitcode/-timeout_exitcode: libFuzzer's default 77 would read as
# "skipped" to meson.
"$target" -max_total_time="$secs" -timeout=5 -rss_limit_mb=2048 \
	-error_exitcode=1 -timeout_exitcode=1 -print_final_stats=1 \
	-artifact_prefix="$out/" "$work/corpus-$name" "$seeds"
rc=$?

found=0
for f in "$out"/*; do
	[ -f "$f" ] || continue
	found=1
	echo "== $name: finding $f ($(wc -c <"$f") bytes); base64 (first 64 KiB):"
	head -c 65536 "$f" | base64
	echo "== end of $(basename "$f")"
done
if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then
	echo "$name: libFuzzer exit $rc; inputs above (not added to $seeds)" >&2
	exit 1
fi
exit 0
