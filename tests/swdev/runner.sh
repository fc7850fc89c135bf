#!/usr/bin/env bash
# Cargo's test runner (scripts/test.sh sets CARGO_TARGET_<triple>_RUNNER to this): runs the test
# binaries that need a GPU on the software device, and every other one as it is.
# On the software device: the stand-ins libcuda.so.1, libcublasLt.so and libnccl.so(.2) come
# first on the library path (child processes, such as the ranks of a multi-process test, inherit
# it), AddressSanitizer's runtime is preloaded (the stand-ins are built with it; leaks are not
# checked, since Rust frees some statics never), and DLM_REQUIRE_GPU=1 turns a missing device into
# a failure instead of a skip.
set -euo pipefail
bin=$1
case "$(basename "$bin")" in
    cuda_*|swdev_*)
        ROOT=$(cd "$(dirname "$0")/../.." && pwd)
        export LD_LIBRARY_PATH="$ROOT/target/swdev/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        export LD_PRELOAD="$(g++ -print-file-name=libasan.so)"
        export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
        export DLM_REQUIRE_GPU=1
        ;;
esac
exec "$@"
