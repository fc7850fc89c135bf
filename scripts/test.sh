#!/usr/bin/env bash
# The test command (README, .ci/run): installs nvcc from PyPI into .venv-cuda so that build.rs
# compiles every CUDA kernel (no GPU needed), then runs every test. CUDA parity tests report
# "skipped" without a GPU. Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-nvcc.sh
DLM_REQUIRE_NVCC=1 cargo test --locked "$@"
