#!/usr/bin/env bash
# Configures and builds boxmeter into build/ (or $BUILD_DIR). Extra arguments
# go to cmake's configure step, e.g. -DCMAKE_BUILD_TYPE=Debug.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja "$@" >/dev/null
ninja -C "$build_dir"
