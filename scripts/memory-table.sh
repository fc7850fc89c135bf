#!/usr/bin/env bash
# The README's memory table: `dlm-engine plan` for base, large, XL and XXL, per GPU, as markdown.
# Usage: bash scripts/memory-table.sh [plan flags...]   (default: 8 GPUs, --max-tokens 4096,
# --max-len 256, sampling 32 canvases of 256 tokens)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DLM_ENGINE:-target/release/dlm-engine}
[ -x "$BIN" ] || BIN=target/debug/dlm-engine
FLAGS=("$@")
[ ${#FLAGS[@]} -gt 0 ] || FLAGS=(--gpus 8 --max-tokens 4096 --max-len 256 --sample-batch-size 32 --sample-len 256)
echo "dlm-engine plan --preset P ${FLAGS[*]}"
echo
for p in base large xl xxl; do "$BIN" plan --preset "$p" "${FLAGS[@]}" --json; done | python3 -c '
import json, sys
dec = json.JSONDecoder()
text, plans = sys.stdin.read(), []
i = 0
while i < len(text):
    if text[i].isspace():
        i += 1
        continue
    v, i = dec.raw_decode(text, i)
    plans.append(v)
gib = lambda b: f"{b / 2**30:.1f}"
cards = [c["name"] for c in plans[0]["cards"]]
head = ["model", "params", "sampling"] + [f"training ZeRO-{z}" for z in range(3)]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for name, p in zip(["base", "large", "XL", "XXL"], plans):
    cols = [p["sampling"]] + [p["training"][f"zero{z}"] for z in range(3)]
    def cell(c):
        fit = "/".join(("✓" if c["fits"][k] else "✗") for k in cards)
        return gib(c["total"]) + " GiB " + fit
    params = "%.2f B" % (p["params"] / 1e9)
    print("| " + name + " | " + params + " | " + " | ".join(cell(c) for c in cols) + " |")
print()
print("GiB per GPU; ✓/✗: fits " + " / ".join(cards) + ".")
'
