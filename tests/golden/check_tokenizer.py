"""Checks a dlm-engine tokenizer.json against Python (not run in CI; CI reads the golden file).

    .venv-golden/bin/python tests/golden/check_tokenizer.py TOKENIZER.json [--write GOLDEN.json]

1. Loads the file with `tokenizers.Tokenizer.from_file` and with transformers'
   `PreTrainedTokenizerFast(tokenizer_file=...)`, and checks both give the same ids on a few strings.
2. Checks the XLM-R layout: <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> the last id, and `<s> … </s>`.
3. With --write, stores the strings, their ids and decodes (plain, skip-special, and HF's
   clean-up), which `tests/data_pipeline.rs` compares with the Rust `Tok`.

Regenerating the committed fixture:
    python tests/golden/tiny_corpus.py tests/fixtures/tiny_unigram/corpus.jsonl
    dlm-engine tokenizer train --input tests/fixtures/tiny_unigram/corpus.jsonl --vocab-size 300 \
        --out tests/fixtures/tiny_unigram/tokenizer.json
    python tests/golden/check_tokenizer.py tests/fixtures/tiny_unigram/tokenizer.json \
        --write tests/fixtures/tiny_unigram/golden.json
"""
import argparse
import json
import sys

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

TEXTS = [
    "the cat sees the red house.",
    "Translate: der Hund mag das Haus !",
    "Zoë ﬁnds ｔｈｅ ｍｏｏｎ ① today , isn't it ?",
    "  leading and   repeated spaces\tand a tab\nand a newline  ",
    "Straße café crème 1234567",
    "an unseen word: quixotic ¿ 日本",
    "fill the <mask> please",
    "",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer")
    ap.add_argument("--write", help="write the golden JSON here")
    a = ap.parse_args()

    tok = Tokenizer.from_file(a.tokenizer)
    hf = PreTrainedTokenizerFast(tokenizer_file=a.tokenizer)
    n = tok.get_vocab_size(with_added_tokens=True)
    special = {s: tok.token_to_id(s) for s in ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]}
    want = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": n - 1}
    failures = []
    if special != want:
        failures.append(f"special ids {special}, expected {want}")

    cases = []
    for text in TEXTS:
        ids = tok.encode(text).ids
        hf_ids = hf.encode(text)
        if ids != hf_ids:
            failures.append(f"{text!r}: tokenizers {ids} != transformers {hf_ids}")
        if ids[:1] != [0] or ids[-1:] != [2]:
            failures.append(f"{text!r}: not wrapped in <s> … </s>: {ids}")
        skip = tok.decode(ids, skip_special_tokens=True)
        hf_clean = hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        cases.append({
            "text": text,
            "ids": ids,
            "tokens": tok.encode(text).tokens,
            "decode": tok.decode(ids, skip_special_tokens=False),
            "decode_skip_special": skip,
            "decode_hf_cleanup": hf_clean,
        })
        print(f"{text!r} -> {ids}")

    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print(f"ok: vocab {n}, special ids {special}; tokenizers and transformers agree on {len(TEXTS)} strings")
    if a.write:
        golden = {"vocab_size": n, "special": special, "cases": cases}
        with open(a.write, "w", encoding="utf-8") as f:
            json.dump(golden, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print(f"wrote {a.write}")


if __name__ == "__main__":
    main()
