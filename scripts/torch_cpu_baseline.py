#!/usr/bin/env python3
"""PyTorch CPU timings of the work `dlm-engine bench train|sample` measures, for a same-machine
ratio (scripts/bench-cpu.sh runs both and prints the table).

Workloads (the shape flags match the bench's):
- train:  HF XLMRobertaForMaskedLM (SDPA attention, dropout 0.1) on the coupled batch (2·B rows of
          prompt + target + </s> tokens), about half the target slots masked, the LM head on the
          masked rows only, cross-entropy, backward and an AdamW step.
- sample: the same model without gradients over B canvases, the LM head on every target slot,
          log-softmax and argmax (one sampling step).
Prints `<workload> <ms> ms/step` lines (the median of the timed repeats).

Run: python scripts/torch_cpu_baseline.py train --layers 4 --hidden 128 --vocab 2000 --batch 128 \
         --prompt-len 10 --target-len 10
(needs torch and transformers, e.g. the golden venv of tests/golden/README.md; not used by CI)
"""
import argparse
import statistics
import time

import torch
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

PRESETS = {  # layers, hidden, heads, vocab, positions (dlm-engine's presets)
    "tiny": (2, 128, 4, 1000, 130),
    "small": (4, 256, 4, 8000, 258),
    "base": (12, 768, 12, 250002, 514),
}


def model_for(a, dropout):
    layers, hidden, heads, vocab, positions = PRESETS[a.preset]
    layers, hidden, vocab = a.layers or layers, a.hidden or hidden, a.vocab or vocab
    cfg = XLMRobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=4 * hidden, max_position_embeddings=positions, type_vocab_size=1,
                           hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, attn_implementation="sdpa")
    return XLMRobertaForMaskedLM(cfg).float(), vocab


def name(a):
    n = a.preset
    for tag, v in (("L", a.layers), ("H", a.hidden), ("V", a.vocab)):
        if v:
            n += f"-{tag}{v}"
    return n


def canvases(rows, a, vocab, seq):
    ids = torch.randint(4, min(vocab, 250000) - 2, (rows, seq))
    ids[:, 0] = 0
    ids[:, -1] = 2
    return ids


def timed(fn, warmup, steps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def train(a):
    model, vocab = model_for(a, 0.1)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01)
    # As the bench's training rows: prompt_len tokens ([<s>] first), target_len − 1 and </s>.
    clean = canvases(2 * a.batch, a, vocab, a.prompt_len + a.target_len)
    target = torch.zeros_like(clean, dtype=torch.bool)
    target[:, a.prompt_len:-1] = True

    def step():
        masked = target & (torch.rand(clean.shape) < 0.5)
        ids = torch.where(masked, torch.full_like(clean, vocab - 1), clean)
        rows = masked.reshape(-1).nonzero().squeeze(1)
        opt.zero_grad(set_to_none=False)
        h = model.roberta(ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        logits = model.lm_head(h.reshape(-1, h.shape[-1])[rows])
        loss = torch.nn.functional.cross_entropy(logits, clean.reshape(-1)[rows])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return timed(step, a.warmup, a.steps)


def sample(a):
    model, vocab = model_for(a, 0.0)
    model.eval()
    # As the bench's canvases: [<s>] prompt (prompt_len tokens), target_len masks, </s>.
    ids = canvases(a.batch, a, vocab, a.prompt_len + a.target_len + 1)
    ids[:, a.prompt_len:-1] = vocab - 1
    rows = torch.arange(ids.numel()).reshape(ids.shape)[:, a.prompt_len:-1].reshape(-1)

    def step():
        with torch.no_grad():
            h = model.roberta(ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            logp = torch.log_softmax(model.lm_head(h.reshape(-1, h.shape[-1])[rows]), dim=-1)
            logp.max(dim=-1)

    return timed(step, a.warmup, a.steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["train", "sample"])
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int)
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--target-len", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    torch.manual_seed(0)
    ms = train(a) if a.what == "train" else sample(a)
    print(f"{a.what}_{name(a)}_B{a.batch}_L{a.prompt_len + a.target_len} {ms:.3f} ms/step  "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
