#!/usr/bin/env bash
# The test command (README, .ci/run): installs nvcc from PyPI into .venv-cuda so that build.rs
# compiles every CUDA kernel (no GPU needed), then runs every test and the CPU emulation of the
# kernels. CUDA parity tests report "skipped" without a GPU. Extra arguments go to `cargo test`
# (e.g. a test name filter) and skip the emulation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-nvcc.sh
DLM_REQUIRE_NVCC=1 cargo test --locked "$@"
# The kernels' logic on the CPU (scripts/emulate-kernels): a full run only, not with a filter.
if [ $# -eq 0 ]; then
    if command -v g++ >/dev/null; then
        bash scripts/emulate-kernels/run.sh
    else
        echo "emulated kernel checks skipped: no g++ (they need a C++20 compiler)"
    fi
fi
