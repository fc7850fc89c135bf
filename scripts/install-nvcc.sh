#!/usr/bin/env bash
# Installs nvcc from PyPI into <repo>/.venv-cuda so that build.rs precompiles every CUDA kernel
# (no GPU or system CUDA needed). All five wheels are pinned: an unpinned nvvm pulls PTX ISA 9.5,
# which driver 580 on the GPU machines refuses (docs/gpu.md §1). Idempotent: does nothing
# when the pinned nvcc is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-cuda
WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)

have_pinned_nvcc() {
    local n
    for n in "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc; do
        [ -x "$n" ] && "$n" --version 2>/dev/null | grep -q "V13.0.88" && return 0
    done
    return 1
}

if have_pinned_nvcc; then
    echo "install-nvcc: pinned nvcc 13.0.88 already in $VENV"
    exit 0
fi
PY=${PYTHON:-python3}
[ -x "$VENV/bin/pip" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${WHEELS[@]}"
have_pinned_nvcc || { echo "install-nvcc: nvcc 13.0.88 still missing after pip install" >&2; exit 1; }
# build.rs cannot watch a directory that may not exist without rerunning on every build, so
# tell cargo here that the kernels must now be compiled.
touch build.rs
echo "install-nvcc: installed nvcc 13.0.88 into $VENV"
