#!/usr/bin/env bash
# Times the CPU backend's forward/backward of a small model and the same work in PyTorch CPU,
# one after the other on this machine, so the ratio can be read in one run.
# PyTorch comes from the golden venv (tests/golden/README.md) or $PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench cpu_model -- --noplot 2>&1 | grep -E "^cpu tiny|time:"
PY=${PYTHON:-python3}
"$PY" scripts/torch_cpu_baseline.py
