#!/usr/bin/env bash
# Builds and runs the NCCL stand-in's self-test (nccl_selftest.cpp: ranks as forked processes on
# the software device) under AddressSanitizer + UndefinedBehaviorSanitizer. It links against the
# software device's libcuda.so.1 and libnccl.so.2, so it builds those first (build.sh; a no-op when
# they are current). Needs g++ and the CUDA headers of .venv-cuda.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bash "$here/build.sh"
lib="$root/target/swdev/lib"
inc=$(ls -d "$root"/.venv-cuda/lib/python3*/site-packages/nvidia/cu13/include | head -1)
if [ -n "${OUT_DIR:-}" ]; then out=$OUT_DIR; else out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
g++ -std=c++20 -O1 -g -Wall -Wextra -Werror -pthread -fsanitize=address,undefined -fno-sanitize-recover=all \
    -I "$here" -I "$inc" -o "$out/nccl_selftest" "$here/nccl_selftest.cpp" "$here/nccl_selftest_failures.cpp" \
    -L"$lib" -l:libnccl.so.2 -l:libcuda.so.1 -ldl -Wl,-rpath,"$lib"
# The stand-ins keep a few never-freed statics (queued work may run during exit): no leak check.
ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 "$out/nccl_selftest"
