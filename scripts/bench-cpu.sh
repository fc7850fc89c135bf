#!/usr/bin/env bash
# The CPU backend against PyTorch CPU on the same machine, workload by workload, one right after
# the other: `dlm-engine bench train|sample` and scripts/torch_cpu_baseline.py at the same shapes,
# then a table of the two times and their ratio (PyTorch / dlm-engine: above 1 is faster).
#
#   bash scripts/bench-cpu.sh            # PyTorch from $PYTHON, else .venv-golden, else python3
#
# Run it on an otherwise idle machine: PyTorch's OpenMP threads spin while they wait, so a busy
# machine slows it far more than it slows dlm-engine, and the ratio means nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv-golden/bin/python ]; then PY=.venv-golden/bin/python; else PY=python3; fi
fi
cargo build --release --quiet
BIN=target/release/dlm-engine
STEPS=${STEPS:-10}

# label | the shape flags both sides take
WORKLOADS=(
    "training step, hidden 128|train --preset tiny --layers 4 --vocab 2000 --batch 128 --prompt-len 10 --target-len 10"
    "training step, hidden 256|train --preset tiny --layers 4 --hidden 256 --vocab 2000 --batch 128 --prompt-len 10 --target-len 10"
    "sampling step, batch 200, hidden 128|sample --preset tiny --layers 4 --vocab 2000 --batch 200 --prompt-len 10 --target-len 10"
    "sampling step, batch 200, hidden 256|sample --preset tiny --layers 4 --hidden 256 --vocab 2000 --batch 200 --prompt-len 10 --target-len 10"
    "base forward, 8 x 128, head on the targets|sample --preset base --batch 8 --prompt-len 64 --target-len 64"
)

ms() { awk '{ for (i = 1; i < NF; i++) if ($(i + 1) == "ms/step") { print $i; exit } }'; }

printf '| work | PyTorch CPU (ms) | dlm-engine (ms) | PyTorch / dlm-engine |\n|---|---|---|---|\n'
for w in "${WORKLOADS[@]}"; do
    label=${w%%|*}
    flags=${w#*|}
    # shellcheck disable=SC2086
    ours=$("$BIN" bench $flags --steps "$STEPS" 2>/dev/null | ms)
    # shellcheck disable=SC2086
    theirs=$("$PY" scripts/torch_cpu_baseline.py $flags --steps "$STEPS" | ms)
    ratio=$(awk -v a="$theirs" -v b="$ours" 'BEGIN { printf "%.2f", a / b }')
    printf '| %s | %s | %s | %s |\n' "$label" "$theirs" "$ours" "$ratio"
done
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); $("$PY" -c 'import torch; print("torch", torch.__version__, torch.get_num_threads(), "threads")')"
