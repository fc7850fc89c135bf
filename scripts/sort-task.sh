#!/usr/bin/env bash
# The default recipe's harder check (issue 12): a from-scratch `tiny` model with the settings
# `init` records learns to write 4-8 English words in alphabetical order (6000 training pairs,
# 200 held-out) in five minutes of training on the CPU, for three seeds. Each run is
# `dlm-engine demo --task sort` (its own data, tokenizer, model, training and sampling); the
# training budget is the time, not the demo's default 1500 updates.
#
#   bash scripts/sort-task.sh [SEEDS...]      # default seeds: 1 2 3; about 5.5 minutes each
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
OUT=${OUT:-runs/sort-task}
mkdir -p "$OUT"
for seed in "${@:-1 2 3}"; do
    for s in $seed; do
        target/release/dlm-engine demo --task sort --min-words 4 --max-words 8 --steps 1000000 --max-time 300s \
            --seed "$s" --out "$OUT/seed-$s" 2>&1 | tee "$OUT/seed-$s.log" | grep -E "^done:|held-out: Exact" | sed "s/^/seed $s: /"
    done
done
