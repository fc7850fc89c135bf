"""PyTorch baselines for dlm-engine's sampling and training steps (run on the GPU machine by gpu-check.sh).

Sampling: one RDM unmasking step on an XLM-R base-shaped masked LM with random bf16 weights: B
sequences of 64 prompt tokens + 64 target tokens (all <mask> at the start), a forward pass, logits
for the 64 target positions only (gathered before the LM head, as dlm-engine does), per-position max
softmax probability and argmax, then the top-4 most confident positions are written back. The
canvas is reset after every step so each step does the same work. Batch 1 and 64, eager and
torch.compile(mode="reduce-overhead") (CUDA graphs).

Training: one RDM training step as `dlm-engine bench train` does it: B = 64 examples of 64 source
+ 64 target tokens, each drawn twice with coupled (nested, complementary-timestep) masks on the
target half, so 2B = 128 sequences go through the model; random f32 weights (train mode, dropout
0.1) under bf16 autocast, cross-entropy over the masked rows, backward, fused AdamW. Two heads:
`masked` gathers the masked rows before the LM head (what dlm-engine does), `all` runs the head on
every row and lets the loss ignore the rest (HF's own MLM loss). Eager, and torch.compile for the
masked head (TORCH_COMPILE_ALL=1 compiles the all-rows head too). XLM-R base and large shapes.

Prints `RESULT <workload> <mode> <ms per step>` lines (modes: eager, compiled for sampling; eager,
eager_all, compiled, compiled_all for training) and writes $OUT/torch_baseline.json. Compiled runs
start only while the elapsed time is under TORCH_BUDGET_S (default 240 s), so that gpu-check.sh
fits the device lease. Uses transformers' XLMRobertaForMaskedLM when importable, else an
equivalent plain-torch post-LN encoder (noted in the JSON).
"""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

MASK_ID, PAD_ID, VOCAB = 250001, 1, 250002
# hidden, layers, heads, ffn
SIZES = {"base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096)}
PROMPT, TARGET, TOP_K = 64, 64, 4
TRAIN_BATCH = 64
OUT = os.environ.get("OUT", ".")
BUDGET_S = float(os.environ.get("TORCH_BUDGET_S", "240"))
T0 = time.time()
RESULTS = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}


def save():
    with open(os.path.join(OUT, "torch_baseline.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)


class PlainXlmr(torch.nn.Module):
    """XLM-R's computation (post-LN encoder + LM head) in plain torch, for boxes without transformers."""

    def __init__(self, size):
        super().__init__()
        hidden, layers, self.heads, ffn = SIZES[size]
        self.word = torch.nn.Embedding(VOCAB, hidden)
        self.pos = torch.nn.Embedding(514, hidden)
        self.typ = torch.nn.Embedding(1, hidden)
        self.emb_ln = torch.nn.LayerNorm(hidden, eps=1e-5)
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleDict(
                dict(qkv=torch.nn.Linear(hidden, 3 * hidden), out=torch.nn.Linear(hidden, hidden),
                     ln1=torch.nn.LayerNorm(hidden, eps=1e-5), up=torch.nn.Linear(hidden, ffn),
                     down=torch.nn.Linear(ffn, hidden), ln2=torch.nn.LayerNorm(hidden, eps=1e-5)))
            for _ in range(layers))
        self.head_dense = torch.nn.Linear(hidden, hidden)
        self.head_ln = torch.nn.LayerNorm(hidden, eps=1e-5)
        self.decoder = torch.nn.Linear(hidden, VOCAB)

    def body(self, ids):
        b, t = ids.shape
        # XLM-R positions start after the padding id.
        pos = torch.arange(t, device=ids.device) + PAD_ID + 1
        h = self.emb_ln(self.word(ids) + self.typ.weight[0] + self.pos(pos))
        for l in self.layers:
            d = h.shape[-1]
            q, k, v = l["qkv"](h).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
            h = l["ln1"](h + l["out"](a))
            h = l["ln2"](h + l["down"](F.gelu(l["up"](h))))
        return h

    def head(self, h):
        return self.decoder(self.head_ln(F.gelu(self.head_dense(h))))


def make_model(size="base", dtype=torch.bfloat16, train=False):
    """(body, head, parameters): body(ids) -> hidden states, head(h) -> logits."""
    hidden, layers, heads, ffn = SIZES[size]
    try:
        from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

        cfg = XLMRobertaConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                               num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=514,
                               type_vocab_size=1, pad_token_id=PAD_ID, bos_token_id=0, eos_token_id=2,
                               attn_implementation="sdpa")
        with torch.device("cuda"):
            m = XLMRobertaForMaskedLM(cfg).to(dtype).train(train)
        RESULTS["model"] = "transformers.XLMRobertaForMaskedLM"
        return (lambda ids: m.roberta(input_ids=ids).last_hidden_state), m.lm_head, m.parameters()
    except ImportError:
        with torch.device("cuda"):
            m = PlainXlmr(size).to(dtype).train(train)
        RESULTS["model"] = "plain torch (transformers not importable; no dropout)"
        return m.body, m.head, m.parameters()


def median_ms(fn, warm, iters):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def sampling_step_ms(body, head, batch, compiled):
    gen = torch.Generator(device="cuda").manual_seed(batch)
    prompt = torch.randint(5, 250000, (batch, PROMPT), device="cuda", generator=gen)
    canvas = torch.full((batch, TARGET), MASK_ID, device="cuda")

    def scores(ids):
        logits = head(body(ids)[:, PROMPT:])
        conf, pred = logits.float().softmax(-1).max(-1)
        return conf, pred

    score = torch.compile(scores, mode="reduce-overhead") if compiled else scores

    @torch.inference_mode()
    def step():
        conf, pred = score(torch.cat([prompt, canvas], 1))
        conf = conf.masked_fill(canvas != MASK_ID, -1.0)
        idx = conf.topk(TOP_K, dim=1).indices
        canvas.scatter_(1, idx, pred.gather(1, idx))
        canvas.fill_(MASK_ID)

    return median_ms(step, warm=5 if compiled else 3, iters=20)


def coupled_batch(batch):
    """ids [2B, L] and the flat indices and targets of the masked rows: each example twice, with
    timesteps t_a >= t_b and the t_b mask nested in the t_a one (dlm-engine's q_sample_coupled)."""
    gen = torch.Generator(device="cuda").manual_seed(batch)
    src = torch.randint(5, 250000, (batch, PROMPT), device="cuda", generator=gen)
    tgt = torch.randint(5, 250000, (batch, TARGET), device="cuda", generator=gen)
    u = torch.rand(batch, 2, device="cuda", generator=gen)
    t_a, t_b = u.max(1, keepdim=True).values, u.min(1, keepdim=True).values
    m_a = torch.rand(batch, TARGET, device="cuda", generator=gen) < t_a
    m_b = m_a & (torch.rand(batch, TARGET, device="cuda", generator=gen) < t_b / t_a)
    masks = torch.cat([m_a, m_b], 0)
    tgt2 = torch.cat([tgt, tgt], 0)
    ids = torch.cat([torch.cat([src, src], 0), tgt2.masked_fill(masks, MASK_ID)], 1)
    sel = torch.cat([torch.zeros(2 * batch, PROMPT, dtype=torch.bool, device="cuda"), masks], 1)
    labels = torch.cat([torch.full((2 * batch, PROMPT), -100, device="cuda"), tgt2.masked_fill(~masks, -100)], 1)
    return ids, sel, labels


def train_step_ms(size, all_rows, compiled):
    body, head, params = make_model(size, torch.float32, train=True)
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    ids, sel, labels = coupled_batch(TRAIN_BATCH)
    # Flat row indices (not a boolean mask) keep the compiled graph's shapes static.
    rows = sel.view(-1).nonzero().squeeze(1)
    row_labels = labels.view(-1)[rows]

    def loss_fn(ids):
        h = body(ids)
        if all_rows:
            logits = head(h)
            return F.cross_entropy(logits.float().view(-1, VOCAB), labels.view(-1), ignore_index=-100)
        return F.cross_entropy(head(h.view(-1, h.shape[-1]).index_select(0, rows)).float(), row_labels)

    fn = torch.compile(loss_fn) if compiled else loss_fn

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    ms = median_ms(step, warm=3, iters=10)
    peak = torch.cuda.max_memory_allocated() / 2**30
    return ms, peak, rows.numel()


def run(key, mode, fn):
    """Runs one workload, records it, and keeps going when it fails (e.g. out of memory)."""
    try:
        ms, extra = fn()
        RESULTS[f"{key}_{mode}"] = {"ms_per_step": round(ms, 3), **extra}
        print(f"RESULT {key} {mode} {ms:.3f}", flush=True)
    except Exception as e:  # one failing mode must not hide the others
        RESULTS[f"{key}_{mode}"] = f"ERROR {e!r}"[:300]
        print(f"RESULT {key} {mode} ERROR {e!r}"[:300], file=sys.stderr, flush=True)
    save()
    torch._dynamo.reset()  # drop compiled graphs (and the models they hold) before the next workload
    torch.cuda.empty_cache()


def within_budget(what):
    left = BUDGET_S - (time.time() - T0)
    if left <= 0:
        RESULTS[f"skipped_{what}"] = f"TORCH_BUDGET_S={BUDGET_S:.0f} spent"
        print(f"skipping {what}: TORCH_BUDGET_S={BUDGET_S:.0f} spent", file=sys.stderr, flush=True)
    return left > 0


def sample_result(body, head, batch, compiled):
    ms = sampling_step_ms(body, head, batch, compiled)
    return ms, {"seq_steps_s": round(batch / ms * 1e3, 1)}


def train_result(size, all_rows, compiled):
    ms, peak, rows = train_step_ms(size, all_rows, compiled)
    tokens = 2 * TRAIN_BATCH * (PROMPT + TARGET)
    return ms, {"tokens_per_s": round(tokens / ms * 1e3), "peak_gib": round(peak, 1), "masked_rows": rows}


def main():
    compile_on = os.environ.get("TORCH_COMPILE", "1") != "0"
    compile_all = os.environ.get("TORCH_COMPILE_ALL", "0") == "1"
    sample_key = lambda b: f"sample_base_B{b}_L{PROMPT + TARGET}"
    train_key = lambda size: f"train_{size}_B{TRAIN_BATCH}_L{PROMPT + TARGET}"
    # Eager first (seconds each), then the compiled runs while the budget lasts.
    body, head, _ = make_model()
    for batch in (1, 64):
        run(sample_key(batch), "eager", lambda: sample_result(body, head, batch, False))
    for size in SIZES:
        for all_rows in (False, True):
            run(train_key(size), "eager_all" if all_rows else "eager", lambda: train_result(size, all_rows, False))
    if compile_on:
        for batch in (1, 64):
            if within_budget(f"sample_B{batch}_compiled"):
                run(sample_key(batch), "compiled", lambda: sample_result(body, head, batch, True))
        for size in SIZES:
            for all_rows in (False, True) if compile_all else (False,):
                mode = "compiled_all" if all_rows else "compiled"
                if within_budget(f"train_{size}_{mode}"):
                    run(train_key(size), mode, lambda: train_result(size, all_rows, True))
    RESULTS["elapsed_s"] = round(time.time() - T0)
    save()


if __name__ == "__main__":
    main()
