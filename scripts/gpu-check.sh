#!/usr/bin/env bash
# Everything GPU in one call, run on the GPU machine from the staged folder (no Rust there):
#     bash .gpu-stage/gpu-check.sh          (from the repository root; scripts/stage-gpu.sh makes the folder)
# 1. every staged CUDA parity test binary (DLM_REQUIRE_GPU=1: a GPU that does not start fails);
# 2. the per-kernel criterion benches;
# 3. `dlm-engine bench sample` and `bench train --preset base|large --batch 64` on the GPU (lines
#    `<workload> <ms> ms/step ...`, e.g. `train_base_B64_L128 95.1 ms/step ...`);
# 4. the PyTorch baselines (torch_baseline.py, /opt/torch/.venv): sampling, and training with the
#    LM head on the masked rows or on all rows, eager and torch.compile;
# then a short table: parity results, kernel medians, ms/step next to torch and the speed-ups.
# The whole run keeps to GPU_CHECK_BUDGET_S (default 480 s, for a 15-minute device lease): each
# stage's timeout is cut to what is left, a stage with under 20 s left is skipped, and torch's
# compiled runs only start within TORCH_BUDGET_S (derived from what is left).
# Full logs go to $OUT (or .gpu-stage/out). Knobs: SKIP_BENCH=1 (criterion), SKIP_ENGINE=1
# (dlm-engine bench), SKIP_TORCH=1, PARITY_ONLY=1 (all three: a quick rerun after a fix),
# TESTS="cuda_parity" (which staged test binaries), TORCH_COMPILE=0, DLM_BENCH_SAMPLE_ARGS="...",
# DLM_BENCH_TRAIN_ARGS="...", TORCH_PY=/path/to/python, SANITIZE=memcheck|racecheck|synccheck
# (runs the parity tests under compute-sanitizer with that tool: 10-100x slower, so pair it with
# PARITY_ONLY=1 TESTS=cuda_parity; reparam_step's tied `cutoff` writes store one value and are a
# known, harmless racecheck report).
# Never touches the GPU's settings.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$HERE/out}
mkdir -p "$OUT"
TORCH_PY=${TORCH_PY:-/opt/torch/.venv/bin/python}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
if [ "${PARITY_ONLY:-0}" = 1 ]; then SKIP_BENCH=1 SKIP_ENGINE=1 SKIP_TORCH=1; fi
T_START=$(date +%s)
STATUS=0
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
# Seconds a stage may run: its own cap, or what is left of the budget if less (0: skip it).
allow() {
    local left=$((BUDGET - ($(date +%s) - T_START)))
    if [ "$left" -lt 20 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv || true; } >"$OUT/gpu.txt" 2>&1
echo "== $(head -2 "$OUT/gpu.txt" | tail -1)"

# ---- 1. parity tests -------------------------------------------------------------------------
say "== parity tests"
export DLM_REQUIRE_GPU=1
SAN=()
if [ -n "${SANITIZE:-}" ]; then
    san_bin=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1 || true)
    if [ -n "$san_bin" ]; then
        SAN=("$san_bin" --tool "$SANITIZE" --error-exitcode 1)
        say "(under compute-sanitizer --tool $SANITIZE)"
    else
        say "SANITIZE=$SANITIZE asked, but compute-sanitizer was not found: running without it"
        STATUS=1
    fi
fi
# The staged binaries look for the golden fixtures here when their build path is absent.
export DLM_FIXTURES=${DLM_FIXTURES:-$PWD/tests/golden/fixtures}
N_TESTS=0
for t in "$HERE"/tests/*; do
    [ -x "$t" ] || continue
    if [ -n "${TESTS:-}" ] && ! grep -qw "$(basename "$t")" <<<"$TESTS"; then continue; fi
    N_TESTS=$((N_TESTS + 1))
    name=$(basename "$t")
    cap=$(allow 240)
    if [ "$cap" = 0 ]; then say "$name: skipped (budget spent)"; STATUS=1; continue; fi
    start=$(date +%s)
    # A hung kernel must not eat the whole device lease.
    if timeout "$cap" ${SAN[@]+"${SAN[@]}"} "$t" --test-threads=1 >"$OUT/test-$name.log" 2>&1; then verdict=PASS; else verdict=FAIL; STATUS=1; fi
    line=$(grep -E "^test result" "$OUT/test-$name.log" | tail -1)
    say "$(printf '%-24s %s  %s  (%ss)' "$name" "$verdict" "${line#test result: }" "$(( $(date +%s) - start ))")"
    if [ "$verdict" = FAIL ]; then
        grep -E "^test .* FAILED|panicked|Error|error" "$OUT/test-$name.log" | head -20 | sed 's/^/    /' | tee -a "$SUMMARY"
    fi
done
[ "$N_TESTS" -gt 0 ] || { say "no parity test binaries in $HERE/tests (run scripts/stage-gpu.sh)"; STATUS=1; }
unset DLM_REQUIRE_GPU

# ---- 2. kernel benches -----------------------------------------------------------------------
cap=$(allow 150)
if [ "${SKIP_BENCH:-0}" != 1 ] && [ -x "$HERE/benches/kernels" ] && [ "$cap" != 0 ]; then
    say "== kernel benches (median per call, batch-64 = 64x128 tokens)"
    export CRITERION_HOME=${TMPDIR:-/tmp}/dlm-criterion
    if ! timeout "$cap" "$HERE/benches/kernels" --bench >"$OUT/bench-kernels.log" 2>&1; then
        say "kernel benches FAILED or cut at ${cap}s (see bench-kernels.log)"
        STATUS=1
    fi
    # Criterion prints the name (alone on a line when long) then `time: [low median high]`.
    awk '/time:/ { n = ($1 == "time:") ? prev : $1; gsub(/.*\[/, ""); printf "%-44s %s %s\n", n, $3, $4 } { prev = $1 }' \
        "$OUT/bench-kernels.log" | tee -a "$SUMMARY"
fi

# ---- 3. dlm-engine step benchmarks -----------------------------------------------------------
declare -A DLM
# Runs `dlm-engine bench <args>` into log $1 and collects its `<workload> <ms> ms/step` lines.
engine_bench() {
    local log=$1 cap=$2
    shift 2
    if [ "$cap" = 0 ]; then say "dlm-engine bench $*: skipped (budget spent)"; STATUS=1; return; fi
    timeout "$cap" "$HERE/dlm-engine" bench "$@" >"$OUT/$log" 2>&1 || { STATUS=1; say "dlm-engine bench $* FAILED (see $log)"; }
    while read -r key ms _; do DLM[$key]=$ms; done < <(grep -E '^[A-Za-z0-9_]+ +[0-9.]+ +ms/step' "$OUT/$log")
}
if [ "${SKIP_ENGINE:-0}" = 1 ]; then
    say "dlm-engine benches skipped (SKIP_ENGINE=1)"
elif [ -x "$HERE/dlm-engine" ] && "$HERE/dlm-engine" bench train --help >/dev/null 2>&1; then
    # Batch 1 op by op first (no CUDA graph), to show what recording the step buys; its line is
    # reported, then overwritten in the table by the default (recorded) run below.
    # shellcheck disable=SC2086
    DLM_CUDA_GRAPHS=0 engine_bench dlm-bench-sample-nographs.log "$(allow 60)" sample --batch 1 ${DLM_BENCH_SAMPLE_ARGS:---device cuda}
    # shellcheck disable=SC2086
    engine_bench dlm-bench-sample.log "$(allow 120)" sample ${DLM_BENCH_SAMPLE_ARGS:---device cuda}
    for preset in base large; do
        # shellcheck disable=SC2086
        engine_bench "dlm-bench-train-$preset.log" "$(allow 150)" train --preset "$preset" --batch 64 ${DLM_BENCH_TRAIN_ARGS:---device cuda}
    done
    grep -HE '^[A-Za-z0-9_]+ +[0-9.]+ +ms/step' "$OUT"/dlm-bench-*.log 2>/dev/null | sed "s|^$OUT/||" | tee -a "$SUMMARY"
else
    echo "(no dlm-engine with 'bench train' staged: engine column left empty)" | tee -a "$SUMMARY"
fi

# ---- 4. PyTorch baseline ---------------------------------------------------------------------
declare -A TORCH
cap=$(allow 360)
if [ "${SKIP_TORCH:-0}" != 1 ] && [ "$cap" != 0 ]; then
    if [ -x "$TORCH_PY" ]; then
        # Compiled runs start only while torch has this much of its own time left for them.
        torch_budget=$((cap > 150 ? cap - 120 : 30))
        OUT="$OUT" TORCH_COMPILE="${TORCH_COMPILE:-1}" TORCH_BUDGET_S="${TORCH_BUDGET_S:-$torch_budget}" PYTHONUNBUFFERED=1 \
            timeout "$cap" "$TORCH_PY" "$HERE/torch_baseline.py" >"$OUT/torch-baseline.log" 2>&1 \
            || say "torch baseline exited non-zero or was cut at ${cap}s (see torch-baseline.log)"
        while read -r _ key mode ms; do TORCH[$key.$mode]=$ms; done < <(grep -E '^RESULT [A-Za-z0-9_]+ [a-z_]+ [0-9.]+$' "$OUT/torch-baseline.log")
    else
        say "no PyTorch at $TORCH_PY: baseline skipped"
    fi
elif [ "${SKIP_TORCH:-0}" != 1 ]; then
    say "torch baseline skipped (budget spent)"
fi

# ---- table ----------------------------------------------------------------------------------
# Speed-up of dlm-engine over a torch timing (torch ms / engine ms; "-" when either is missing).
speedup() { awk -v t="$1" -v d="$2" 'BEGIN { if (t == "-" || d == "-" || d == 0) print "-"; else printf "%.2fx", t / d }'; }

say "== sampling step, XLM-R base shape, 64 prompt + 64 target tokens (ms/step)"
say "   targets (issue 4): >= 2x torch eager and >= 1x torch compiled, at batch 1 and 64"
say "$(printf '%-22s %12s %14s %12s %10s %12s' workload torch-eager torch-compiled dlm-engine vs-eager vs-compiled)"
for key in sample_base_B1_L128 sample_base_B64_L128; do
    e=${TORCH[$key.eager]:--}; c=${TORCH[$key.compiled]:--}; d=${DLM[$key]:--}
    say "$(printf '%-22s %12s %14s %12s %10s %12s' "$key" "$e" "$c" "$d" "$(speedup "$e" "$d")" "$(speedup "$c" "$d")")"
done
say "== training step: 64 examples x 2 coupled noisings x 128 tokens, dropout 0.1, AdamW (ms/step)"
say "   torch: bf16 autocast, fused AdamW; LM head on all rows or on the masked rows (as dlm-engine)"
say "   targets (issue 5): >= 1.5x torch eager (masked head) and >= 1.2x torch compiled (masked head)"
say "$(printf '%-22s %10s %12s %12s %15s %11s %9s %12s' workload eager-all eager-masked compiled-all compiled-masked dlm-engine vs-eager vs-compiled)"
for key in train_base_B64_L128 train_large_B64_L128; do
    ea=${TORCH[$key.eager_all]:--}; em=${TORCH[$key.eager]:--}; ca=${TORCH[$key.compiled_all]:--}; cm=${TORCH[$key.compiled]:--}
    d=${DLM[$key]:--}
    say "$(printf '%-22s %10s %12s %12s %15s %11s %9s %12s' "$key" "$ea" "$em" "$ca" "$cm" "$d" "$(speedup "$em" "$d")" "$(speedup "$cm" "$d")")"
done
say "== overall: $([ $STATUS = 0 ] && echo OK || echo FAILURES) in $(( $(date +%s) - T_START ))s (logs in $OUT)"
exit $STATUS
