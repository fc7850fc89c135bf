"""PyTorch baseline for dlm-engine's sampling step (run on the GPU machine by gpu-check.sh).

The workload is one RDM unmasking step on an XLM-R base-shaped masked LM with random bf16
weights: B sequences of 64 prompt tokens + 64 target tokens (all <mask> at the start), a
forward pass, logits for the 64 target positions only (gathered before the LM head, as
dlm-engine does), per-position max softmax probability and argmax, then the top-4 most
confident positions are written back. The canvas is reset after every step so each step does
the same work. Batch 1 and 64, eager and torch.compile(mode="reduce-overhead") (CUDA graphs).

Prints `RESULT <workload> <mode> <ms per step>` lines and writes $OUT/torch_baseline.json.
Uses transformers' XLMRobertaForMaskedLM when importable, else an equivalent plain-torch
post-LN encoder (noted in the JSON).
"""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

MASK_ID, PAD_ID, VOCAB = 250001, 1, 250002
HIDDEN, LAYERS, HEADS, FFN = 768, 12, 12, 3072
PROMPT, TARGET, TOP_K = 64, 64, 4
OUT = os.environ.get("OUT", ".")
RESULTS = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}


def save():
    with open(os.path.join(OUT, "torch_baseline.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)


class PlainXlmr(torch.nn.Module):
    """XLM-R base's computation (post-LN encoder + LM head) in plain torch, for boxes without transformers."""

    def __init__(self):
        super().__init__()
        self.word = torch.nn.Embedding(VOCAB, HIDDEN)
        self.pos = torch.nn.Embedding(514, HIDDEN)
        self.typ = torch.nn.Embedding(1, HIDDEN)
        self.emb_ln = torch.nn.LayerNorm(HIDDEN, eps=1e-5)
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleDict(
                dict(qkv=torch.nn.Linear(HIDDEN, 3 * HIDDEN), out=torch.nn.Linear(HIDDEN, HIDDEN),
                     ln1=torch.nn.LayerNorm(HIDDEN, eps=1e-5), up=torch.nn.Linear(HIDDEN, FFN),
                     down=torch.nn.Linear(FFN, HIDDEN), ln2=torch.nn.LayerNorm(HIDDEN, eps=1e-5)))
            for _ in range(LAYERS))
        self.head_dense = torch.nn.Linear(HIDDEN, HIDDEN)
        self.head_ln = torch.nn.LayerNorm(HIDDEN, eps=1e-5)
        self.decoder = torch.nn.Linear(HIDDEN, VOCAB)

    def body(self, ids):
        b, t = ids.shape
        # XLM-R positions start after the padding id.
        pos = torch.arange(t, device=ids.device) + PAD_ID + 1
        h = self.emb_ln(self.word(ids) + self.typ.weight[0] + self.pos(pos))
        for l in self.layers:
            q, k, v = l["qkv"](h).view(b, t, 3, HEADS, HIDDEN // HEADS).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, HIDDEN)
            h = l["ln1"](h + l["out"](a))
            h = l["ln2"](h + l["down"](F.gelu(l["up"](h))))
        return h

    def head(self, h):
        return self.decoder(self.head_ln(F.gelu(self.head_dense(h))))


def make_model():
    try:
        from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

        cfg = XLMRobertaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                               num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=514,
                               type_vocab_size=1, pad_token_id=PAD_ID, bos_token_id=0, eos_token_id=2,
                               attn_implementation="sdpa")
        with torch.device("cuda"):
            m = XLMRobertaForMaskedLM(cfg).to(torch.bfloat16).eval()
        RESULTS["model"] = "transformers.XLMRobertaForMaskedLM"
        return (lambda ids: m.roberta(input_ids=ids).last_hidden_state), m.lm_head
    except ImportError:
        with torch.device("cuda"):
            m = PlainXlmr().to(torch.bfloat16).eval()
        RESULTS["model"] = "plain torch (transformers not importable)"
        return m.body, m.head


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


def main():
    t0 = time.time()
    body, head = make_model()
    modes = ["eager"] + (["compiled"] if os.environ.get("TORCH_COMPILE", "1") != "0" else [])
    for batch in (1, 64):
        for mode in modes:
            key = f"sample_base_B{batch}_L{PROMPT + TARGET}"
            try:
                ms = sampling_step_ms(body, head, batch, mode == "compiled")
                RESULTS[f"{key}_{mode}"] = {"ms_per_step": round(ms, 3), "seq_steps_s": round(batch / ms * 1e3, 1)}
                print(f"RESULT {key} {mode} {ms:.3f}", flush=True)
            except Exception as e:  # one failing mode must not hide the others
                RESULTS[f"{key}_{mode}"] = f"ERROR {e!r}"[:300]
                print(f"RESULT {key} {mode} ERROR {e!r}"[:300], file=sys.stderr, flush=True)
            save()
    RESULTS["elapsed_s"] = round(time.time() - t0)
    save()


if __name__ == "__main__":
    main()
