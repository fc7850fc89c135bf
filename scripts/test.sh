#!/usr/bin/env bash
# The test command (README, .ci/run): installs nvcc from PyPI into .venv-cuda so that build.rs
# compiles every CUDA kernel (no GPU needed), builds the software CUDA device (tests/swdev) and
# runs the format and clippy checks and every test, the CUDA ones on that device, then the CPU
# emulation of the kernels and the cuBLASLt and NCCL stand-ins' self-tests. Extra arguments go to
# `cargo test` (e.g. a test name filter) and skip everything but the tests.
#
# Without g++ on x86-64 the software device cannot be built: the CUDA tests then print "skipped"
# (DLM_REQUIRE_SWDEV=1, as in CI, makes that an error).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-nvcc.sh
if command -v g++ >/dev/null && [ "$(uname -m)" = x86_64 ]; then
    bash tests/swdev/build.sh
    # Cargo starts every test binary through the runner, which puts the CUDA tests on the device.
    export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/tests/swdev/runner.sh"
elif [ "${DLM_REQUIRE_SWDEV:-0}" != 0 ]; then
    echo "test.sh: the software CUDA device needs g++ on x86-64" >&2
    exit 1
else
    echo "test.sh: no g++ on x86-64: the CUDA tests will be skipped (no software device)"
fi
if [ $# -eq 0 ]; then
    # Style first: formatting (rustfmt.toml) and clippy with every warning an error.
    cargo fmt --check
    DLM_REQUIRE_NVCC=1 cargo clippy --locked --all-targets -- -D warnings
fi
DLM_REQUIRE_NVCC=1 cargo test --locked "$@"
if [ $# -eq 0 ] && command -v g++ >/dev/null; then
    # The kernels' logic on the CPU (scripts/emulate-kernels), the cuBLASLt stand-in's own check and
    # the NCCL stand-in's (ranks as processes on the software device, which needs x86-64).
    bash scripts/emulate-kernels/run.sh
    bash tests/swdev/build_cublaslt_selftest.sh
    if [ "$(uname -m)" = x86_64 ]; then bash tests/swdev/build_nccl_selftest.sh; fi
fi
