#!/bin/sh
# run.sh - install what is missing, build, and start ringmail on its
# embedded default (every port of the provider table, data in
# ./ringmail-data). Extra arguments go to `ringmail serve`, e.g.
#   scripts/run.sh --port-offset 10000
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
sh scripts/build.sh
exec ./build/app/ringmail serve "$@"
