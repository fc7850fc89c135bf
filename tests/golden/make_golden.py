#!/usr/bin/env python3
"""Golden fixtures for dlm-engine's Rust tests, made with PyTorch + HF transformers (CPU, float32).

Usage (from the repository root):
    .venv-golden/bin/python tests/golden/make_golden.py            # (re)write tests/golden/fixtures/
    .venv-golden/bin/python tests/golden/make_golden.py --verify    # re-check files on disk
    .venv-golden/bin/python tests/golden/make_golden.py --check-init DIR

Everything is seeded and single-threaded, so re-running rewrites byte-identical files (for the same
library versions; see README.md). The RDM objective in `rdm_loss` is the reference implementation of
docs/method.md §3 that the Rust loss is compared against.
"""

import argparse
import copy
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is a local directory

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The entries of FIXTURES this script makes, besides one folder per architecture (ARCHS).
OWN_OUTPUTS = ["tokenizer.json", "tokenize.json", "fill_mask.json", "postln_bf16", "postln_f16", "postln_noprefix"]

# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------

SPM_VOCAB = 300  # the tokenizer then has SPM_VOCAB + 2 ids (<pad> and <mask> are added)

# Small multilingual corpus: the tokenizer only has to look like XLM-R's, not be good.
CORPUS = """\
Hello world, this is a small test of the tokenizer.
The quick brown fox jumps over the lazy dog.
The capital of France is Paris, and the capital of Germany is Berlin.
We translate the German sentence into English and check the result.
Diffusion language models predict masked tokens in parallel.
A model reads the source sentence and then writes the target sentence.
Please answer the question according to the given context.
She said that the weather was nice today, but it rained in the evening.
They have been working on this project for three years.
What is the answer? I think it is forty-two, but I am not sure.
Translate the sentences into English. German: Ich habe Hunger. English: I am hungry.
The following are multiple choice questions (with answers) about history.
My friends and I went to the market to buy bread, cheese and apples.
Reading books is a wonderful way to learn new things every day.
There were 12 students in the room at 9:30 in the morning.
In 2023 the company sold 45,000 units; in 2024 it sold 61,250 units.
The price rose from 3.50 to 4.75 euros (an increase of 35.7%).
Call me at 555-0199 or write to the office at 221 Baker Street.
Version 1.2.3 was released on 2026-11-26 at 08:15.
Guten Morgen! Wie geht es Ihnen heute?
Ich heiße Anna und ich wohne in München.
Die Straße ist lang, und die Häuser sind schön.
Viele Grüße aus Köln und bis bald!
Das Wetter ist heute schlecht, aber morgen wird es besser.
Wir übersetzen den deutschen Satz ins Englische.
Der Müller mahlt das Korn, und der Bäcker backt das Brot.
Können Sie mir bitte helfen? Ich suche den Bahnhof.
Die Kinder spielen im Garten, während die Eltern Kaffee trinken.
Über den Wolken muss die Freiheit wohl grenzenlos sein.
Es ist ein schöner Tag, um draußen spazieren zu gehen.
Je pense, donc je suis. Ça va très bien, merci beaucoup.
Le café est très bon à Paris; nous sommes allés au musée.
Où est la gare? C'est à côté de l'hôtel.
El niño come una manzana en la mañana. ¿Dónde está el baño?
La canción es muy bonita, ¡qué alegría!
Hyvää päivää! Ångström, smörgåsbord, fjord.
Zażółć gęślą jaźń. Příliš žluťoučký kůň.
Привет, мир! Как дела? Спасибо, хорошо.
Москва большая, а Санкт-Петербург красивый.
Καλημέρα κόσμε. Ελληνικά γράμματα: α β γ δ.
東京は日本の首都です。こんにちは世界。
北京是中国的首都。你好，世界。
"Quoted text", 'single quotes', [brackets], {braces} and <angles>.
Wait... what?! Yes -- no; maybe: perhaps.
Email: test@example.com, path: /usr/local/bin, hash #42, 50% & more.
a + b = c, x * y = z, 10 / 2 = 5, 7 - 3 = 4.
naïve résumé façade fiancée coöperate élan déjà vu.
"""

# A handful of NFKC mappings compiled into the Precompiled normalizer (the full nmt_nfkc map is
# 240 kB, too big to copy into every fixture directory). Each rule maps codepoints -> codepoints.
def normalization_rules():
    import unicodedata

    rules = []
    singles = [chr(c) for c in range(0xFF01, 0xFF5F)]  # fullwidth ASCII
    singles += [chr(c) for c in range(0xFB00, 0xFB07)]  # Latin ligatures ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ
    singles += ["\u00a0", "\u2009", "\u3000"]  # no-break, thin and ideographic spaces
    singles += ["\u00b2", "\u00b3", "\u00b9", "\u2026", "\u2122", "\u00bd"]  # ² ³ ¹ … ™ ½
    singles += [chr(c) for c in range(0x2460, 0x2469)]  # circled digits ① … ⑨
    for ch in singles:
        rules.append((ch, unicodedata.normalize("NFKC", ch)))
    for base in "aeiouAEIOUnNcC":  # decomposed accents compose (multi-codepoint sources)
        for mark in "\u0300\u0301\u0302\u0308\u0303\u0327":
            composed = unicodedata.normalize("NFC", base + mark)
            if len(composed) == 1:
                rules.append((base + mark, composed))
    rules += [("\t", " "), ("\n", " "), ("\r", " ")]  # as nmt_nfkc does
    return rules


def build_tokenizer(tmp: Path):
    """Trains a sentencepiece Unigram model and converts it the way HF's XLMRobertaConverter does:
    fairseq order <s>=0 <pad>=1 </s>=2 <unk>=3, spm pieces shifted by one, <mask> last."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as spm_pb
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors

    corpus = tmp / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    rules = tmp / "rules.tsv"
    hexes = lambda s: " ".join(f"{ord(c):X}" for c in s)  # noqa: E731
    rules.write_text("".join(f"{hexes(a)}\t{hexes(b)}\n" for a, b in normalization_rules()))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp / "spm"),
        model_type="unigram",
        vocab_size=SPM_VOCAB,
        character_coverage=1.0,
        num_threads=1,
        normalization_rule_tsv=str(rules),
        minloglevel=2,
    )
    proto = spm_pb.ModelProto()
    proto.ParseFromString((tmp / "spm.model").read_bytes())
    assert [p.piece for p in proto.pieces[:3]] == ["<unk>", "<s>", "</s>"]

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(p.piece, p.score) for p in proto.pieces[3:]]
    vocab += [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ["<s>", "<pad>", "</s>", "<unk>"]])
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
    assert tok.get_vocab_size() == len(vocab) and tok.token_to_id("<mask>") == len(vocab) - 1
    return tok


TOKENIZE_CASES = [
    ("plain", "Hello world, this is a test."),
    ("german", "Guten Morgen! Die Straße ist schön, viele Grüße."),
    ("accents", "naïve café in München, ¿dónde está?"),
    ("non_latin", "Привет мир, Καλημέρα, 東京"),
    ("digits", "In 2024 we sold 61,250 units at 3.50 euros (35.7%)."),
    ("punctuation", "Wait...what?! \"quoted\" 'single'; [a]{b}<c> #42 & @x"),
    ("repeated_spaces", "many    spaces   between  words"),
    ("leading_trailing_space", "  leading and trailing  "),
    ("empty", ""),
    ("only_spaces", "   "),
    ("mask", "The capital of France is <mask>."),
    ("mask_lstrip_and_glued", "Hello   <mask> world<mask>!"),
    ("unknown_chars", "I love 🙂 and € and ☃."),
    ("nfkc_precompiled", "ＡＢＣ ｆｉｎｅ ﬁne cafe\u0301 ①②③ x\u00a0y … ™"),
    ("tabs_newlines", "tab\there\nnew line\r\nend"),
]


def tokenize_cases(tok):
    out = []
    for name, text in TOKENIZE_CASES:
        enc = tok.encode(text)
        out.append({
            "name": name,
            "text": text,
            "ids": enc.ids,
            "tokens": enc.tokens,
            "decoded": tok.decode(enc.ids, skip_special_tokens=True),
        })
    return out


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------

ARCHS = {"postln": "XLMRobertaForMaskedLM", "preln": "XLMRobertaXLForMaskedLM"}
MODEL_SEEDS = {"postln": 1234, "preln": 5678}


def model_config(arch, vocab_size):
    from transformers import XLMRobertaConfig, XLMRobertaXLConfig

    cls = XLMRobertaConfig if arch == "postln" else XLMRobertaXLConfig
    return cls(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
        hidden_act="gelu", layer_norm_eps=1e-5,
        architectures=[ARCHS[arch]],
    )


def is_layer_norm(name):
    return "layernorm" in name.lower().replace("_", "")


def make_model(arch, vocab_size):
    """A tiny random model whose every tensor is moved off its init value, so that no weight is
    exactly 1 or 0 and no gradient or bias is trivially zero."""
    import transformers

    torch.manual_seed(MODEL_SEEDS[arch])
    config = model_config(arch, vocab_size)
    model = getattr(transformers, ARCHS[arch])(config)
    model.config._attn_implementation = "eager"  # plain softmax attention, the textbook reference
    gen = torch.Generator().manual_seed(MODEL_SEEDS[arch] + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied tensors are listed once: perturbed once
            noise = torch.randn(p.shape, generator=gen)
            if is_layer_norm(name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif is_layer_norm(name):
                p.copy_(0.1 * noise)
            elif name == "lm_head.bias":
                p.copy_(0.5 * noise)  # spreads the output distribution so top-k orders are stable
            else:
                p.add_(0.05 * noise)
    assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight
    model.eval()
    return model


def canonical_names(model, saved_keys):
    """named_parameters() lists each tied tensor once, under whichever alias it meets first
    (transformers 5 reports the word embeddings as `lm_head.decoder.weight`). Map every parameter
    to the one alias that save_pretrained wrote into model.safetensors."""
    by_ptr = {}
    for name, t in model.state_dict(keep_vars=True).items():
        by_ptr.setdefault(t.data_ptr(), []).append(name)
    out = []
    for name, p in model.named_parameters():
        aliases = [n for n in by_ptr[p.data_ptr()] if n in saved_keys]
        assert len(aliases) == 1, (name, aliases)
        out.append((aliases[0], p))
    assert sorted(n for n, _ in out) == sorted(saved_keys), "saved keys differ from the parameters"
    return out


def safetensors_keys(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def save_model_dir(model, out_dir, tokenizer_json, dtype=None):
    out_dir.mkdir(parents=True, exist_ok=True)
    m = model if dtype is None else copy.deepcopy(model).to(dtype)  # deepcopy keeps the tie
    m.save_pretrained(str(out_dir), safe_serialization=True)
    shutil.copyfile(tokenizer_json, out_dir / "tokenizer.json")


# ------------------------------------------------------------------------------------------------
# MLM golden: logits, HF loss and gradients
# ------------------------------------------------------------------------------------------------

def golden_batch(vocab_size, mask_id):
    gen = torch.Generator().manual_seed(42)
    lengths = [10, 7, 4]
    ids = torch.ones(3, 10, dtype=torch.int64)
    for r, n in enumerate(lengths):
        ids[r, 0], ids[r, n - 1] = 0, 2
        ids[r, 1:n - 1] = torch.randint(4, mask_id, (n - 2,), generator=gen)
    ids[0, 3] = mask_id
    ids[1, 4] = mask_id
    labels = torch.full_like(ids, -100)
    # (row, position, keep input id?) — includes the two <mask> slots and row 1's </s>.
    picks = [(0, 1, True), (0, 3, False), (0, 5, False), (0, 8, True),
             (1, 4, False), (1, 6, True), (2, 2, False)]
    for r, c, keep in picks:
        labels[r, c] = ids[r, c] if keep else torch.randint(4, mask_id, (1,), generator=gen)[0]
    assert int((labels != -100).sum()) == 7
    assert all(int(labels[r, c]) != int(ids[r, c]) for r, c, keep in picks if not keep)
    return ids, (ids != 1).long(), labels


def sequential_position_ids(ids, pad_id=1):
    """Positions 2..L+1 in every slot, pads included: what the official code gets by passing
    inputs_embeds (docs/method.md §1.1). HF's input_ids path instead gives pads position pad_id."""
    L = ids.shape[1]
    return (torch.arange(L) + pad_id + 1).unsqueeze(0).expand_as(ids).contiguous()


def mlm_golden(model, names):
    V = model.config.vocab_size
    ids, attn, labels = golden_batch(V, V - 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits
        logits_seqpos = model(input_ids=ids, attention_mask=attn,
                              position_ids=sequential_position_ids(ids)).logits
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=attn, labels=labels)
    out.loss.backward()
    # The HF loss must be the plain mean CE over labelled slots.
    sel = labels != -100
    by_hand = F.cross_entropy(out.logits[sel], labels[sel])
    assert torch.allclose(by_hand, out.loss, rtol=1e-6, atol=0), (by_hand, out.loss)
    assert torch.equal(out.logits.detach(), logits)
    tensors = {
        "input_ids": ids, "attention_mask": attn, "labels": labels,
        "logits": logits.contiguous(), "logits_seqpos": logits_seqpos.contiguous(),
        "loss": out.loss.detach().reshape(1),
    }
    tensors.update(collect_grads(names))
    model.zero_grad(set_to_none=True)
    return tensors


def collect_grads(names):
    grads = {}
    for name, p in names:
        assert p.grad is not None, f"no gradient for {name}"
        grads[f"grad.{name}"] = p.grad.detach().clone().contiguous()
    return grads


# ------------------------------------------------------------------------------------------------
# RDM objective (docs/method.md §3): the reference implementation
# ------------------------------------------------------------------------------------------------

T_STEPS = 50


def coupled_masks(maskable, ta, tb, gen):
    """m_a masks each maskable slot with prob ta/T; m_b = m_a & (u > (ta-tb)/ta) keeps a subset with
    marginal prob tb/T. (Rows here all have ta != tb; with ta == tb the official code draws m_b
    independently, which this fixture does not exercise.)"""
    u_a = torch.rand(maskable.shape, generator=gen)
    m_a = maskable & (u_a < (ta.float() / T_STEPS).unsqueeze(1))
    u_b = torch.rand(maskable.shape, generator=gen)
    m_b = m_a & (u_b > ((ta - tb).float() / ta.float()).unsqueeze(1))
    return m_a, m_b


def rdm_loss(model, x_t, t, loss_mask, x0_doubled, num_maskable, weighting="linear", label_smoothing=0.0,
             T=T_STEPS, pad_id=1):
    """L = 1/(2B) * sum_i w(t_i)/N_i * sum_{j masked in i} l_ij, over the doubled batch of 2B rows.
    w = T - t + 1 ("linear") or T / t ("reciprocal"); N_i = maskable count of the source row;
    l = (1 - ls) * CE + ls * mean_over_vocab(-log_softmax). Logits are made only at masked slots:
    hidden rows are gathered before the LM head."""
    hidden = model.roberta(input_ids=x_t, attention_mask=(x_t != pad_id).long()).last_hidden_state
    rows, cols = loss_mask.bool().nonzero(as_tuple=True)
    logits = model.lm_head(hidden[rows, cols])  # [M, V]
    logp = F.log_softmax(logits, dim=-1)
    ce = -logp.gather(1, x0_doubled[rows, cols].unsqueeze(1)).squeeze(1)
    per_token = (1 - label_smoothing) * ce + label_smoothing * (-logp.mean(dim=-1))
    t_f = t.to(per_token.dtype)
    weight = (T - t_f + 1) if weighting == "linear" else (T / t_f)
    per_row_scale = weight / num_maskable.to(per_token.dtype)
    return (per_token * per_row_scale[rows]).sum() / x_t.shape[0]


def rdm_batch(vocab_size):
    mask_id = vocab_size - 1
    gen = torch.Generator().manual_seed(7)
    src_len, tgt_len, L = [3, 2], [4, 5], 10
    B = 2
    x0 = torch.ones(B, L, dtype=torch.int64)
    partial = torch.zeros(B, L, dtype=torch.int64)
    for r in range(B):
        n = 1 + src_len[r] + tgt_len[r] + 1
        x0[r, 0], x0[r, n - 1] = 0, 2
        x0[r, 1:n - 1] = torch.randint(4, mask_id, (n - 2,), generator=gen)
        partial[r, :1 + src_len[r]] = 1
    maskable = (partial == 0) & (x0 != 1)
    t1 = torch.tensor([37, 9])
    t2 = torch.tensor([12, 44])
    ta, tb = torch.maximum(t1, t2), torch.minimum(t1, t2)
    # Smallest seed for which every one of the 2B rows has at least one masked slot.
    for seed in range(1000):
        m_a, m_b = coupled_masks(maskable, ta, tb, torch.Generator().manual_seed(seed))
        if bool(m_a.any(1).all()) and bool(m_b.any(1).all()):
            break
    assert bool((m_b <= m_a).all())
    loss_mask = torch.cat([m_a, m_b]).long()
    x0_doubled = torch.cat([x0, x0])
    x_t = torch.where(loss_mask.bool(), torch.full_like(x0_doubled, mask_id), x0_doubled)
    return {
        "x0": x0, "partial": partial, "maskable": maskable.long(),
        "t1": t1, "t2": t2, "t": torch.cat([ta, tb]), "mask_seed": torch.tensor([seed]),
        "x_t": x_t, "loss_mask": loss_mask, "num_maskable": maskable.sum(1),
    }


def rdm_golden(model, names):
    V = model.config.vocab_size
    b = rdm_batch(V)
    x0d = torch.cat([b["x0"], b["x0"]])
    nm = torch.cat([b["num_maskable"], b["num_maskable"]])
    model.zero_grad(set_to_none=True)
    loss = rdm_loss(model, b["x_t"], b["t"], b["loss_mask"], x0d, nm, "linear", 0.0)
    loss.backward()
    tensors = dict(b)
    tensors["loss_linear"] = loss.detach().reshape(1)
    tensors.update(collect_grads(names))
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        ls = rdm_loss(model, b["x_t"], b["t"], b["loss_mask"], x0d, nm, "reciprocal", 0.1)
        # Cross-check the gathered path against full logits + explicit loops.
        full = model(input_ids=b["x_t"], attention_mask=(b["x_t"] != 1).long()).logits
        total = 0.0
        for i in range(full.shape[0]):
            for j in range(full.shape[1]):
                if b["loss_mask"][i, j]:
                    ce = F.cross_entropy(full[i, j:j + 1], x0d[i, j:j + 1])
                    total += (T_STEPS - b["t"][i].item() + 1) / nm[i].item() * ce.item()
        assert math.isclose(total / full.shape[0], loss.item(), rel_tol=1e-5), (total, loss)
    tensors["loss_reciprocal_ls"] = ls.reshape(1)
    return {k: v.contiguous() for k, v in tensors.items()}


# ------------------------------------------------------------------------------------------------
# Fill-mask via the transformers pipeline
# ------------------------------------------------------------------------------------------------

FILL_MASK_TEXTS = [
    "The capital of France is <mask>.",
    "Guten Morgen! Wie geht es <mask> heute?",
    "Hello <mask> world, this is <mask> test.",
]
TOP_K = 5


# ------------------------------------------------------------------------------------------------
# Length predictor (docs/method.md §5.1): nn.TransformerEncoder (one post-LN ReLU layer) over the
# frozen backbone's features of `[<s>] prompt`, mean pooling over real positions, then
# Linear(H→FFN) → tanh → Linear(FFN→514); plain mean CE over `class = target tokens − 1`.
# ------------------------------------------------------------------------------------------------

LENGTH_SEED = 4321
LENGTH_CLASSES = 514


def make_length_module(config):
    """The official module's two parts, named as the official model's attributes name them, with
    every tensor moved off its init value (as make_model does). Dropout is off for the golden."""
    torch.manual_seed(LENGTH_SEED)
    H, F_, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    layer = torch.nn.TransformerEncoderLayer(d_model=H, nhead=heads, dim_feedforward=F_, dropout=0.0,
                                             activation="relu", layer_norm_eps=1e-5, batch_first=True,
                                             norm_first=False)
    trm = torch.nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
    mlp = torch.nn.Sequential(torch.nn.Linear(H, F_), torch.nn.Tanh(), torch.nn.Linear(F_, LENGTH_CLASSES))
    gen = torch.Generator().manual_seed(LENGTH_SEED + 1)
    with torch.no_grad():
        for _, p in length_named_parameters(trm, mlp):
            noise = torch.randn(p.shape, generator=gen)
            p.add_(0.1 * noise if p.dim() == 1 else 0.05 * noise)
    trm.train()  # dropout 0: the plain (not the fused inference) path, with gradients
    return trm, mlp


def length_named_parameters(trm, mlp):
    return ([(f"length_trm.{n}", p) for n, p in trm.named_parameters()]
            + [(f"length_predictor.{n}", p) for n, p in mlp.named_parameters()])


def length_batch(mask_id):
    """`[<s>] prompt` rows (no `</s>`) of 6, 3, 9 and 1 real tokens, right-padded, and classes."""
    gen = torch.Generator().manual_seed(77)
    lengths = [6, 3, 9, 1]
    ids = torch.ones(len(lengths), max(lengths), dtype=torch.int64)
    for r, n in enumerate(lengths):
        ids[r, 0] = 0
        ids[r, 1:n] = torch.randint(4, mask_id, (n - 1,), generator=gen)
    classes = torch.tensor([3, 0, 12, LENGTH_CLASSES - 1], dtype=torch.int64)
    return ids, classes


def length_forward(model, trm, mlp, ids):
    real = ids != 1
    with torch.no_grad():  # the frozen backbone
        feat = model.roberta(input_ids=ids, attention_mask=real.long()).last_hidden_state
    f = trm(feat, src_key_padding_mask=~real)
    m = real.unsqueeze(-1).float()
    pooled = (f * m).sum(1) / m.sum(1)
    return mlp(pooled)


def length_golden(model):
    trm, mlp = make_length_module(model.config)
    ids, classes = length_batch(model.config.vocab_size - 1)
    logits = length_forward(model, trm, mlp, ids)
    loss = F.cross_entropy(logits, classes)
    loss.backward()
    out = {"input_ids": ids, "classes": classes, "logits": logits.detach().contiguous(),
           "loss": loss.detach().reshape(1)}
    for name, p in length_named_parameters(trm, mlp):
        out[f"param.{name}"] = p.detach().clone().contiguous()
        out[f"grad.{name}"] = p.grad.detach().clone().contiguous()
    assert all(p.grad is None for p in model.parameters()), "the backbone must stay frozen"
    return out


def verify_length(model, d):
    """Recomputes the length fixture from its stored parameters, and checks that transformers
    still loads a model directory whose model.safetensors also holds the length predictor
    (reporting exactly those tensors as unexpected) with unchanged logits."""
    from safetensors.torch import save_file

    r = load_st(d / "length.safetensors")
    trm, mlp = make_length_module(model.config)
    params = dict(length_named_parameters(trm, mlp))
    assert sorted(params) == sorted(k[len("param."):] for k in r if k.startswith("param.")), "length names"
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(r[f"param.{n}"])
    logits = length_forward(model, trm, mlp, r["input_ids"])
    loss = F.cross_entropy(logits, r["classes"])
    loss.backward()
    assert torch.equal(logits.detach(), r["logits"]) and torch.equal(loss.detach().reshape(1), r["loss"])
    for n, p in params.items():
        assert torch.allclose(p.grad, r[f"grad.{n}"], rtol=1e-5, atol=1e-7), n
    model.zero_grad(set_to_none=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for f in ["config.json", "tokenizer.json"]:
            shutil.copyfile(d / f, tmp / f)
        sd = load_st(d / "model.safetensors")
        sd.update({n: r[f"param.{n}"] for n in params})
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        from transformers import AutoModelForMaskedLM

        m, info = AutoModelForMaskedLM.from_pretrained(str(tmp), output_loading_info=True, attn_implementation="eager")
        assert sorted(info["unexpected_keys"]) == sorted(params), info
        assert not info["missing_keys"] and not info.get("mismatched_keys"), info
        m.eval()
        g = load_st(d / "golden.safetensors")
        with torch.no_grad():
            assert torch.equal(m(input_ids=g["input_ids"], attention_mask=g["attention_mask"]).logits, g["logits"])
    print("length predictor: fixture recomputed; transformers loads a model with it, ignoring",
          len(params), "unexpected length tensors")


def hf_fast_tokenizer(tokenizer_json):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(tokenizer_json)),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
    )


def fill_mask(model, tokenizer_json, raw_tok):
    from transformers import pipeline

    hf_tok = hf_fast_tokenizer(tokenizer_json)
    pipe = pipeline("fill-mask", model=model, tokenizer=hf_tok, top_k=TOP_K, device="cpu")
    mask_id = raw_tok.token_to_id("<mask>")
    out = []
    for text in FILL_MASK_TEXTS:
        ids = raw_tok.encode(text).ids
        assert hf_tok(text)["input_ids"] == ids, "PreTrainedTokenizerFast disagrees with the file"
        positions = [i for i, x in enumerate(ids) if x == mask_id]
        res = pipe(text)
        per_mask = res if len(positions) > 1 else [res]
        assert len(per_mask) == len(positions)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        masks = []
        for pos, preds in zip(positions, per_mask):
            probs = logits[pos].softmax(-1)
            top = torch.topk(logits[pos], TOP_K + 1)
            # Rust recomputes this ranking; keep it away from near ties.
            gaps = (top.values[:-1] - top.values[1:]).min().item()
            assert gaps > 1e-3, f"near tie in the top-{TOP_K} of {text!r} @ {pos}: {gaps}"
            assert [p["token"] for p in preds] == top.indices[:TOP_K].tolist()
            for p, i in zip(preds, top.indices[:TOP_K].tolist()):
                assert math.isclose(p["score"], probs[i].item(), rel_tol=1e-5)
            masks.append({
                "position": pos,
                "top": [{"id": p["token"], "token": p["token_str"], "prob": p["score"]} for p in preds],
            })
        out.append({"text": text, "input_ids": ids, "masks": masks})
    return out


# ------------------------------------------------------------------------------------------------
# Writing and verifying
# ------------------------------------------------------------------------------------------------

def write_json(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def save_tensors(path, tensors):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def write_noprefix(model, out_dir):
    """The postln weights under bare names (`embeddings.…`, `encoder.…`) plus explicit
    `lm_head.decoder.{weight,bias}`, as some older checkpoints are stored."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = {}
    for name, t in model.state_dict().items():
        key = name[len("roberta."):] if name.startswith("roberta.") else name
        sd[key] = t.detach().clone().contiguous()
    assert "lm_head.decoder.weight" in sd and "lm_head.decoder.bias" in sd
    from safetensors.torch import save_file

    save_file(sd, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    model.config.to_json_file(str(out_dir / "config.json"))


def deterministic_torch():
    import transformers

    torch.set_num_threads(1)  # fixes the reduction order, so reruns give identical bytes
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.disable_progress_bar()


def generate():
    deterministic_torch()
    # Clear only what this script writes: other generators (make_metric_golden.py,
    # make_rouge_py_golden.py, sampler_reference.py, ...) keep their fixtures in the same folder.
    for name in [*OWN_OUTPUTS, *ARCHS]:
        p = FIXTURES / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(Path(tmp))
    tok_path = FIXTURES / "tokenizer.json"
    tok.save(str(tok_path), pretty=True)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))  # every case below goes through the saved file
    V = tok.get_vocab_size()
    write_json(FIXTURES / "tokenize.json", tokenize_cases(tok))

    fill = {}
    for arch in ARCHS:
        model = make_model(arch, V)
        d = FIXTURES / arch
        save_model_dir(model, d, tok_path)
        names = canonical_names(model, safetensors_keys(d / "model.safetensors"))
        rows = [json.dumps([n, list(p.shape)]) for n, p in names]  # one parameter per line
        (d / "param_names.json").write_text("[\n" + ",\n".join(rows) + "\n]\n")
        save_tensors(d / "golden.safetensors", mlm_golden(model, names))
        fill[arch] = fill_mask(model, tok_path, tok)
        if arch == "postln":
            save_tensors(d / "rdm.safetensors", rdm_golden(model, names))
            save_tensors(d / "length.safetensors", length_golden(model))
            save_model_dir(model, FIXTURES / "postln_bf16", tok_path, torch.bfloat16)
            save_model_dir(model, FIXTURES / "postln_f16", tok_path, torch.float16)
            write_noprefix(model, FIXTURES / "postln_noprefix")
    write_json(FIXTURES / "fill_mask.json", fill)
    verify()


def load_st(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def verify():
    """Reload everything from disk and check it against fresh computations."""
    from tokenizers import Tokenizer

    deterministic_torch()
    tok = Tokenizer.from_file(str(FIXTURES / "tokenizer.json"))
    V = tok.get_vocab_size()
    assert [tok.id_to_token(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tok.id_to_token(V - 1) == "<mask>"
    for case in json.loads((FIXTURES / "tokenize.json").read_text(encoding="utf-8")):
        enc = tok.encode(case["text"])
        assert enc.ids == case["ids"] and enc.tokens == case["tokens"], case["name"]
        assert tok.decode(enc.ids, skip_special_tokens=True) == case["decoded"], case["name"]

    ref = load_st(FIXTURES / "postln" / "model.safetensors")
    assert not any(k.startswith("lm_head.decoder") for k in ref), "tied decoder was written"
    for arch in ARCHS:
        d = FIXTURES / arch
        model = load_checked(d, attn_implementation="eager")
        assert model.config.vocab_size == V
        g = load_st(d / "golden.safetensors")
        with torch.no_grad():
            logits = model(input_ids=g["input_ids"], attention_mask=g["attention_mask"]).logits
        assert torch.equal(logits, g["logits"]), arch
        names = json.loads((d / "param_names.json").read_text())
        saved = load_st(d / "model.safetensors")
        assert sorted(n for n, _ in names) == sorted(saved), arch
        assert all(list(saved[n].shape) == s and saved[n].dtype == torch.float32 for n, s in names)
        for n, s in names:
            assert list(g[f"grad.{n}"].shape) == s, n
        grad_keys = {k for k in g if k.startswith("grad.")}
        assert grad_keys == {f"grad.{n}" for n, _ in names}, arch
        # Loss and gradients again, from the reloaded model.
        params = dict(model.named_parameters())
        aliases = {n: n for n in params}
        aliases["roberta.embeddings.word_embeddings.weight"] = next(
            n for n, p in params.items() if p is model.roberta.embeddings.word_embeddings.weight)
        loss = model(input_ids=g["input_ids"], attention_mask=g["attention_mask"], labels=g["labels"]).loss
        loss.backward()
        assert torch.equal(loss.detach().reshape(1), g["loss"]), arch
        for n, _ in names:
            assert torch.allclose(params[aliases[n]].grad, g[f"grad.{n}"], rtol=1e-5, atol=1e-7), n
        model.zero_grad(set_to_none=True)
        fill = json.loads((FIXTURES / "fill_mask.json").read_text(encoding="utf-8"))[arch]
        for e in fill:
            with torch.no_grad():
                probs = model(input_ids=torch.tensor([e["input_ids"]])).logits[0].softmax(-1)
            for m in e["masks"]:
                top = torch.topk(probs[m["position"]], TOP_K)
                assert top.indices.tolist() == [t["id"] for t in m["top"]], (arch, e["text"])
                assert torch.allclose(top.values, torch.tensor([t["prob"] for t in m["top"]]), rtol=1e-5)
        if arch == "postln":
            r = load_st(d / "rdm.safetensors")
            x0d = torch.cat([r["x0"], r["x0"]])
            nm = torch.cat([r["num_maskable"], r["num_maskable"]])
            lin = rdm_loss(model, r["x_t"], r["t"], r["loss_mask"], x0d, nm, "linear", 0.0)
            lin.backward()
            assert torch.allclose(lin.detach().reshape(1), r["loss_linear"], rtol=1e-6), lin
            for n, _ in names:
                assert torch.allclose(params[aliases[n]].grad, r[f"grad.{n}"], rtol=1e-5, atol=1e-7), n
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                rec = rdm_loss(model, r["x_t"], r["t"], r["loss_mask"], x0d, nm, "reciprocal", 0.1)
            assert torch.allclose(rec.reshape(1), r["loss_reciprocal_ls"], rtol=1e-6), rec
            verify_length(model, d)
    for dtype, sub in [(torch.bfloat16, "postln_bf16"), (torch.float16, "postln_f16")]:
        w = load_st(FIXTURES / sub / "model.safetensors")
        assert sorted(w) == sorted(ref), sub
        for k, v in w.items():
            assert v.dtype == dtype and torch.equal(v, ref[k].to(dtype)), (sub, k)
        load_checked(FIXTURES / sub)
    w = load_st(FIXTURES / "postln_noprefix" / "model.safetensors")
    for k, v in ref.items():
        bare = k[len("roberta."):] if k.startswith("roberta.") else k
        assert torch.equal(w[bare], v), k
    assert torch.equal(w["lm_head.decoder.weight"], ref["roberta.embeddings.word_embeddings.weight"])
    assert torch.equal(w["lm_head.decoder.bias"], ref["lm_head.bias"])
    assert not any(k.startswith("roberta.") for k in w)
    m = load_checked(FIXTURES / "postln_noprefix")  # HF accepts prefix-less names too
    for k, v in ref.items():
        assert torch.equal(m.state_dict()[k], v), k
    print("verified:", ", ".join(sorted(p.name for p in FIXTURES.iterdir())))


def load_checked(d, **kwargs):
    """Loads a model directory with transformers and fails on any missing/unexpected key."""
    from transformers import AutoModelForMaskedLM

    model, info = AutoModelForMaskedLM.from_pretrained(str(d), output_loading_info=True, **kwargs)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise SystemExit(f"{d}: loading problems: {problems}")
    model.eval()
    return model


def check_init(d):
    """For `dlm-engine init` output: HF must load it cleanly and run a forward pass."""
    d = Path(d)
    if not (d / "config.json").is_file():
        raise SystemExit(f"{d}: no config.json (not a model directory)")
    try:
        model = load_checked(d)
        V = model.config.vocab_size
        ids = torch.tensor([[0, 4 % V, 5 % V, 6 % V, 2], [0, 7 % V, 2, 1, 1]])
        with torch.no_grad():
            out = model(input_ids=ids.clamp(max=V - 1), attention_mask=(ids != 1).long()).logits
        if tuple(out.shape) != (2, 5, V) or not torch.isfinite(out).all():
            raise SystemExit(f"{d}: bad forward output, shape {tuple(out.shape)}")
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - any load/forward failure is a failed check
        raise SystemExit(f"{d}: {type(e).__name__}: {e}")
    print(f"OK {d}: {type(model).__name__}, vocab {V}, hidden {model.config.hidden_size}, "
          f"layers {model.config.num_hidden_layers}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check-init", metavar="DIR", help="check a model directory written by dlm-engine init")
    ap.add_argument("--verify", action="store_true", help="only re-check the committed fixtures")
    args = ap.parse_args()
    if args.check_init:
        check_init(args.check_init)
    elif args.verify:
        verify()
    else:
        generate()


if __name__ == "__main__":
    main()
