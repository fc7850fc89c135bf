#!/usr/bin/env bash
# Everything GPU in one call, run on the GPU machine from the staged folder (no Rust there):
#     bash .gpu-stage/gpu-check.sh          (from the repository root; scripts/stage-gpu.sh makes the folder)
# 1. every staged CUDA parity test binary (DLM_REQUIRE_GPU=1: a GPU that does not start fails);
# 2. the per-kernel criterion benches;
# 3. `dlm-engine bench sample` when the binary has it (expected to print lines
#    `<workload> <ms> ms/step`, e.g. `sample_base_B1_L128 1.234 ms/step`);
# 4. the PyTorch baseline (torch_baseline.py, /opt/torch/.venv);
# then a short table: parity results, kernel medians, ms/step next to torch and the ratio.
# Full logs go to $OUT (or .gpu-stage/out). Knobs: SKIP_BENCH=1, SKIP_TORCH=1, TORCH_COMPILE=0,
# DLM_BENCH_SAMPLE_ARGS="...", TORCH_PY=/path/to/python. Never touches the GPU's settings.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$HERE/out}
mkdir -p "$OUT"
TORCH_PY=${TORCH_PY:-/opt/torch/.venv/bin/python}
STATUS=0
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv || true; } >"$OUT/gpu.txt" 2>&1
echo "== $(head -2 "$OUT/gpu.txt" | tail -1)"

# ---- 1. parity tests -------------------------------------------------------------------------
say "== parity tests"
export DLM_REQUIRE_GPU=1
N_TESTS=0
for t in "$HERE"/tests/*; do
    [ -x "$t" ] || continue
    N_TESTS=$((N_TESTS + 1))
    name=$(basename "$t")
    start=$(date +%s)
    # A hung kernel must not eat the whole device lease.
    if timeout 300 "$t" --test-threads=1 >"$OUT/test-$name.log" 2>&1; then verdict=PASS; else verdict=FAIL; STATUS=1; fi
    line=$(grep -E "^test result" "$OUT/test-$name.log" | tail -1)
    say "$(printf '%-24s %s  %s  (%ss)' "$name" "$verdict" "${line#test result: }" "$(( $(date +%s) - start ))")"
    if [ "$verdict" = FAIL ]; then
        grep -E "^test .* FAILED|panicked|Error|error" "$OUT/test-$name.log" | head -20 | sed 's/^/    /' | tee -a "$SUMMARY"
    fi
done
[ "$N_TESTS" -gt 0 ] || { say "no parity test binaries in $HERE/tests (run scripts/stage-gpu.sh)"; STATUS=1; }
unset DLM_REQUIRE_GPU

# ---- 2. kernel benches -----------------------------------------------------------------------
if [ "${SKIP_BENCH:-0}" != 1 ] && [ -x "$HERE/benches/kernels" ]; then
    say "== kernel benches (median per call, batch-64 = 64x128 tokens)"
    export CRITERION_HOME=${TMPDIR:-/tmp}/dlm-criterion
    if ! timeout 300 "$HERE/benches/kernels" --bench >"$OUT/bench-kernels.log" 2>&1; then
        say "kernel benches FAILED (see bench-kernels.log)"
        STATUS=1
    fi
    # Criterion prints the name (alone on a line when long) then `time: [low median high]`.
    awk '/time:/ { n = ($1 == "time:") ? prev : $1; gsub(/.*\[/, ""); printf "%-44s %s %s\n", n, $3, $4 } { prev = $1 }' \
        "$OUT/bench-kernels.log" | tee -a "$SUMMARY"
fi

# ---- 3. dlm-engine sampling benchmark --------------------------------------------------------
declare -A DLM
if [ -x "$HERE/dlm-engine" ] && "$HERE/dlm-engine" bench sample --help >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    timeout 300 "$HERE/dlm-engine" bench sample ${DLM_BENCH_SAMPLE_ARGS:-} >"$OUT/dlm-bench-sample.log" 2>&1 || { STATUS=1; say "dlm-engine bench sample FAILED"; }
    while read -r key ms _; do DLM[$key]=$ms; done < <(grep -E '^[A-Za-z0-9_]+ +[0-9.]+ +ms/step' "$OUT/dlm-bench-sample.log")
else
    echo "(dlm-engine has no 'bench sample' yet: engine column left empty)" | tee -a "$SUMMARY"
fi

# ---- 4. PyTorch baseline ---------------------------------------------------------------------
declare -A TORCH
if [ "${SKIP_TORCH:-0}" != 1 ]; then
    if [ -x "$TORCH_PY" ]; then
        OUT="$OUT" TORCH_COMPILE="${TORCH_COMPILE:-1}" timeout 420 "$TORCH_PY" "$HERE/torch_baseline.py" >"$OUT/torch-baseline.log" 2>&1 \
            || say "torch baseline exited non-zero (see torch-baseline.log)"
        while read -r _ key mode ms; do TORCH[$key.$mode]=$ms; done < <(grep -E '^RESULT [A-Za-z0-9_]+ [a-z]+ [0-9.]+$' "$OUT/torch-baseline.log")
    else
        say "no PyTorch at $TORCH_PY: baseline skipped"
    fi
fi

# ---- table -----------------------------------------------------------------------------------
say "== sampling step, XLM-R base shape, 64 prompt + 64 target tokens (ms/step; ratio = engine / best torch)"
say "$(printf '%-22s %12s %14s %12s %8s' workload torch-eager torch-compiled dlm-engine ratio)"
for key in sample_base_B1_L128 sample_base_B64_L128; do
    e=${TORCH[$key.eager]:--}; c=${TORCH[$key.compiled]:--}; d=${DLM[$key]:--}
    ratio=$(awk -v e="$e" -v c="$c" -v d="$d" 'BEGIN {
        best = (c != "-" && (e == "-" || c + 0 < e + 0)) ? c : e;
        if (d == "-" || best == "-") print "-"; else printf "%.2f", d / best }')
    say "$(printf '%-22s %12s %14s %12s %8s' "$key" "$e" "$c" "$d" "$ratio")"
done
say "== overall: $([ $STATUS = 0 ] && echo OK || echo FAILURES) (logs in $OUT)"
exit $STATUS
