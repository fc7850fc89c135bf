#!/usr/bin/env bash
# Builds and runs the cuBLASLt stand-in's self-test (no CUDA headers or GPU needed): once plain and
# once under AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -n "${OUT_DIR:-}" ]; then out=$OUT_DIR; else out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
flags=(-std=c++20 -O1 -Wall -Wextra -Werror -ffp-contract=off)
g++ "${flags[@]}" -o "$out/cublaslt_selftest" "$here/cublaslt_selftest.cpp" "$here/cublaslt.cpp"
"$out/cublaslt_selftest"
g++ "${flags[@]}" -g -fsanitize=address,undefined -fno-sanitize-recover=all \
    -o "$out/cublaslt_selftest_san" "$here/cublaslt_selftest.cpp" "$here/cublaslt.cpp"
ASAN_OPTIONS=detect_leaks=1 "$out/cublaslt_selftest_san"
