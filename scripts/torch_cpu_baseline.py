#!/usr/bin/env python3
"""PyTorch CPU timing of the work benches/cpu_model.rs measures, for a same-machine ratio.

XLMRobertaForMaskedLM shaped like preset `tiny` (post-LN, 2 layers, hidden 128, 4 heads, FFN 512,
vocab 1000), batch 16 x 32 tokens, MLM head on every 4th position (gathered before lm_head, as
dlm-engine does), f32, dropout off. Prints median ms for forward and forward+backward.

Run: python scripts/torch_cpu_baseline.py   (needs torch and transformers; not used by CI)
"""
import statistics
import time

import torch
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

BATCH, SEQ, VOCAB = 16, 32, 1000


def main():
    torch.manual_seed(0)
    cfg = XLMRobertaConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=512, max_position_embeddings=130, type_vocab_size=1,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = XLMRobertaForMaskedLM(cfg).float()
    model.train()  # dropout is 0, so train() only enables autograd bookkeeping as in training
    ids = torch.randint(4, VOCAB, (BATCH, SEQ))
    rows = torch.arange(0, BATCH * SEQ, 4)
    targets = torch.randint(4, VOCAB, (rows.numel(),))

    def forward():
        h = model.roberta(ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        logits = model.lm_head(h.reshape(-1, h.shape[-1])[rows])
        return torch.nn.functional.cross_entropy(logits, targets)

    def fwd_only():
        with torch.no_grad():
            forward()

    def fwd_bwd():
        model.zero_grad(set_to_none=False)
        forward().backward()

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name, fn in [("forward", fwd_only), ("forward+backward", fwd_bwd)]:
        for _ in range(5):
            fn()
        times = []
        for _ in range(30):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        print(f"torch cpu tiny {name} (16x32, head on 25%): median {statistics.median(times):.3f} ms")


if __name__ == "__main__":
    main()
