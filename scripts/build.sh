#!/bin/sh
# build.sh - configure (once) and build ringmail in ./build.
#   BUILD_DIR   the build directory (default: build)
#   MESON_ARGS  extra meson setup arguments (e.g. -Db_sanitize=address,undefined)
set -eu
cd "$(dirname "$0")/.."
dir=${BUILD_DIR:-build}
if [ ! -f "$dir/build.ninja" ]; then
	# shellcheck disable=SC2086
	meson setup "$dir" --buildtype=debugoptimized ${MESON_ARGS:-}
fi
ninja -C "$dir"
