#!/usr/bin/env python3
"""Decoders side by side on one model and one held-out set: exact match, forward passes per
example (NFE) and wall time per example for the paper's sampler and the decoders beyond it.

    python3 scripts/decoding_table.py --bin target/release/dlm-engine --model RUN/final \
        --input valid.jsonl --name demo --out docs/decoding/demo.jsonl

Each variant runs `dlm-engine sample` once (oracle length, argmax, batch 32) and its JSONL is
scored here: exact match after stripping (as `eval --metric exact`), mean NFE and tokens per pass
from the output lines, and ms per example from the command's wall time (model loading included,
so compare rows of one run, on an otherwise idle machine). One JSON line per variant goes to
--out, and a Markdown table to standard output.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time

# (label, sample flags)
VARIANTS = [
    ("paper, K=10", ["--steps", "10"]),
    ("paper, K=50", ["--steps", "50"]),
    ("paper, K=50, margin", ["--steps", "50", "--confidence", "margin"]),
    ("paper, K=50, entropy", ["--steps", "50", "--confidence", "entropy"]),
    ("paper, K=50, random", ["--steps", "50", "--confidence", "random"]),
    ("paper, K=50, blocks of 4", ["--steps", "50", "--block-length", "4"]),
    ("paper, K=50, prefix cache", ["--steps", "50", "--cache", "prefix"]),
    ("threshold 0.9", ["--strategy", "threshold", "--threshold", "0.9"]),
    ("threshold 0.7", ["--strategy", "threshold", "--threshold", "0.7"]),
    ("threshold 0.5", ["--strategy", "threshold", "--threshold", "0.5"]),
    ("threshold 0.9, margin", ["--strategy", "threshold", "--threshold", "0.9", "--confidence", "margin"]),
    ("threshold 0.9, entropy", ["--strategy", "threshold", "--threshold", "0.9", "--confidence", "entropy"]),
    ("threshold 0.9, blocks of 4", ["--strategy", "threshold", "--threshold", "0.9", "--block-length", "4"]),
    ("threshold 0.9, prefix cache", ["--strategy", "threshold", "--threshold", "0.9", "--cache", "prefix"]),
    ("threshold 0.9, blocks of 4, prefix cache",
     ["--strategy", "threshold", "--threshold", "0.9", "--block-length", "4", "--cache", "prefix"]),
    ("threshold 0.9, cfg 0.5", ["--strategy", "threshold", "--threshold", "0.9", "--cfg-scale", "0.5"]),
]


def run_variant(args, flags):
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        cmd = [args.bin, "sample", "--model", args.model, "--input", args.input, "--out", out.name,
               "--batch-size", str(args.batch_size), "--threads", str(args.threads)] + flags
        t0 = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr}")
        lines = [json.loads(l) for l in open(out.name, encoding="utf-8")]
    n = len(lines)
    exact = sum(l["hyp"].strip() == l["tgt"].strip() for l in lines)
    nfe = sum(l["nfe"] for l in lines) / n
    per_pass = sum(l["tokens_per_pass"] * l["nfe"] for l in lines) / max(1, sum(l["nfe"] for l in lines))
    return {"examples": n, "exact": 100.0 * exact / n, "nfe": nfe, "tokens_per_pass": per_pass,
            "ms_per_example": 1000.0 * wall / n}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/dlm-engine")
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--name", required=True, help="the task's name in the table")
    ap.add_argument("--out", required=True, help="JSONL of the measured rows")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for label, flags in VARIANTS:
        r = {"task": args.name, "decoder": label, "flags": " ".join(flags), **run_variant(args, flags)}
        rows.append(r)
        print(f"  {label}: {r['exact']:.1f}% exact, NFE {r['nfe']:.1f}", file=sys.stderr)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"| {args.name}: decoder | exact match | NFE | tokens/pass | ms/example |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['decoder']} | {r['exact']:.1f}% | {r['nfe']:.1f} | {r['tokens_per_pass']:.2f} | {r['ms_per_example']:.1f} |")


if __name__ == "__main__":
    main()
