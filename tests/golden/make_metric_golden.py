#!/usr/bin/env python3
"""Writes tests/golden/fixtures/metrics.json, the reference for tests/metrics_golden.rs.

Run with the golden venv:  .venv-golden/bin/python tests/golden/make_metric_golden.py

References:
- BLEU: sacreBLEU 2.x `BLEU(tokenize=..., lowercase=...)`, the same object `sacrebleu.corpus_bleu`
  builds (smooth "exp", no effective order, one reference). We also keep each segment's sufficient
  statistics so the Rust side can check counts, not only the final score.
- ROUGE-L: `rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)`, F-measure per pair
  (target = reference), averaged over the corpus. Values are stored in [0, 1] as the package gives them.
- Exact match: `hyp.strip() == ref.strip()` after optional `str.lower()`, as a percentage.

The sentences are written here by hand to hit tokenizer corner cases; nothing is downloaded.
"""
import importlib.metadata
import json
import os
import sys

import sacrebleu
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_intl import TokenizerV14International
from rouge_score import rouge_scorer, tokenize as rouge_tokenize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "metrics.json")

# (hypothesis, reference) pairs. Some hypotheses are near-copies so that higher-order n-grams match.
MIXED = [
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("the cat is sitting on a mat .", "The cat sat on the mat."),
    ("It's 3.14 and costs $1,000.50 - isn't it?", "It is 3.14 and it costs $1,000.50, isn't it?"),
    ("We met in 2023.", "We met in 2023 ."),
    ("State-of-the-art models (e.g. RDM) work well.", "State-of-the-art models, e.g. RDM, work well!"),
    ("Grüße aus München – das Wetter ist schön.", "Grüße aus München — das Wetter ist sehr schön."),
    ("C'est l'été à Noël, n'est-ce pas ?", "C'est l'été à Noël, n'est-ce pas?"),
    ("这是一个测试句子，包含标点。", "这是一个测试句子,包含标点."),
    ("日本語の文です。「引用」も含む。", "日本語の文です。「引用」を含む。"),
    ("Great job 👍🏽 see you at 5pm 😀", "Great job 👍 see you at 5 pm 😀!"),
    ("He said “hello” and ‘goodbye’ — then left…", "He said \"hello\" and 'goodbye' - then left..."),
    ("", "An empty hypothesis still counts toward the reference length."),
    ("", ""),
    ("Prices rose 5-6% in Q3; analysts expected 4%.", "Prices rose 5-6 % in Q3, analysts expected 4 %."),
    ("ΟΔΟΣ ΣΟΦΟΣ ΚΑΙ ΦΩΣ.", "Οδος σοφος και φως."),
    ("HELLO World", "hello world"),
    ("  leading and trailing spaces  ", "leading and trailing spaces"),
    ("Tabs\tand\u3000ideographic\u00a0spaces", "Tabs and ideographic spaces"),
    ("&quot;Escaped&quot; &amp; &lt;tagged&gt; text", "\"Escaped\" & <tagged> text"),
    ("Email me at a.b@example.com or visit http://x.org/a?b=c&d=e.", "Email me at a.b@example.com or visit http://x.org/a?b=c&d=e"),
    ("The total is 1.000,50 € or ¥120 or £3.", "The total is 1.000,50 € or ¥ 120 or £ 3."),
    ("¿Qué tal? ¡Muy bien!", "¿Qué tal? ¡Muy bien, gracias!"),
    ("« Bonjour » dit-il.", "« Bonjour », dit-il."),
    ("Ärger über Öl und Übermut ßtraße", "Ärger über Öl und Übermut Straße"),
    ("Version 2.0.1 was released on 2024-01-15.", "Version 2.0.1 was released on 15 January 2024."),
    ("a.b,c 5.x x.5 .5 5. ,5", "a . b , c 5.x x.5 .5 5. ,5"),
    ("math: ∑ ≤ ≥ ± × ÷ = +", "math : ∑ ≤ ≥ ± × ÷ = +"),
    ("under_score {brace} [bracket] ~tilde^ |pipe| `tick`", "under_score {brace} [bracket] ~tilde^ |pipe| `tick`"),
    ("The quick brown fox jumps over the lazy dog", "A quick brown fox jumped over the lazy dog"),
    ("they don't know what they're doing", "They don't know what they are doing."),
    ("مرحبا، كيف حالك؟ ٣٫١٤", "مرحبا، كيف حالك؟ ٣.١٤"),
    ("½ cup and ² squared Ⅷ", "½ cup and ² squared Ⅷ"),
    ("İstanbul KELVIN \u212a", "i̇stanbul kelvin k"),
    ("new\nline and hyph-\nenated <skipped> word", "new line and hyphenated word"),
]

# Small corpora that reach the score's special branches.
SPECIAL = {
    # No n-gram matches at all: sacreBLEU returns 0 early (precisions all zero).
    "no_match": [("alpha beta", "gamma delta epsilon"), ("zeta", "eta theta")],
    # Only 1- and 2-token sentences: no 4-grams anywhere, so the precision loop stops early.
    "no_4grams": [("yes", "yes"), ("no way", "no way"), ("ok", "fine")],
    # Unigram matches but no trigram matches: the "exp" smoothing branch.
    "smoothing": [("a b c d e", "a c b e d"), ("x y", "x z y")],
    # Much shorter hypotheses than references: brevity penalty well below 1.
    "brevity": [
        ("the cat sat on", "the cat sat on the mat today"),
        ("a dog barked loudly", "a dog barked loudly at night in the park"),
    ],
    # Everything identical: BLEU 100, ROUGE-L 1, exact 100.
    "identical": [("same words here .", "same words here ."), ("and again", "and again")],
    # Exact match ignores surrounding whitespace; case only with lowercasing.
    "exact": [("Paris", "paris"), (" 42 ", "42"), ("(A)", "(A)\n"), ("no", "yes")],
}

# Strings for the tokenizer unit tests (tokenizer call only: no lowercasing, no rstrip).
TOKENIZE_CASES = [
    "Hello, world!",
    "It's 3.14 and 1,000.5 dollars.",
    "The year 2023.",
    "The year 2023. Next",
    "e-mail 5-6 pm 10-20 A-B 3- -4",
    "&quot;quoted&quot; &amp;amp; &lt;tag&gt; & plain",
    "<skipped> words <skipped>",
    "line-\nbreak and new\nline",
    "Grüße aus München – „Zitat“ …",
    "C'est l'été, à Noël !",
    "中文句子，包含标点。",
    "日本語の文です。「引用」",
    "emoji 😀👍🏽 test ❤️ 🇩🇪",
    "‘single’ “double” — dash ‐ hyphen ‑ nb",
    "$100 €50 £3 ¥ ₹9",
    "1.000,50 € and 1,5.",
    "a..b,,c ... ,,, 5.. ..5",
    "x.5 5.x 5.5 .5 5. ,5 5,",
    "tab\tsep\u3000ideographic\u00a0nbsp \x1finfo \x1csep\u2028ls",
    "ΟΔΟΣ ΣΟΦΟΣ.",
    "İstanbul KELVIN \u212a",
    "ﬁ ligature and ß",
    "math ∑ ≤ ≥ ± × ÷ = + ^ ~ |",
    "combining e\u0301 and é",
    "#hashtag @user http://x.com/a?b=c&d=e",
    "'quoted' \"double\" `back`",
    "under_score {brace} [bracket] ~tilde^ |pipe|",
    "¿Qué? ¡Sí!",
    "« guillemets » ‹x›",
    "مرحبا، عالم؟ ٣.١٤ ٣٫١٤",
    "½ ² Ⅷ ⅷ 3½",
    "",
    "   ",
    "trailing space ",
    "zero\u200bwidth and soft\u00adhyphen",
]


def bleu_block(pairs, tokenize, lowercase):
    hyps = [h for h, _ in pairs]
    refs = [r for _, r in pairs]
    # corpus_bleu is the entry point the paper's code calls; BLEU(...) is the same object.
    score = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize, lowercase=lowercase)
    metric = BLEU(tokenize=tokenize, lowercase=lowercase)
    seg_stats = metric._extract_corpus_statistics(hyps, [refs])
    check = metric.corpus_score(hyps, [refs])
    assert check.score == score.score
    return {
        "tokenize": tokenize,
        "lowercase": lowercase,
        "score": score.score,
        "precisions": list(score.precisions),
        "bp": score.bp,
        "sys_len": score.sys_len,
        "ref_len": score.ref_len,
        "counts": list(score.counts),
        "totals": list(score.totals),
        # [hyp_len, ref_len, correct1..4, total1..4] per segment, as sacreBLEU builds them.
        "segments": [[int(x) for x in s] for s in seg_stats],
    }


def rouge_block(pairs):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    per = [scorer.score(r, h)["rougeL"] for h, r in pairs]
    fs = [s.fmeasure for s in per]
    return {
        "mean_f": sum(fs) / len(fs),
        "mean_p": sum(s.precision for s in per) / len(per),
        "mean_r": sum(s.recall for s in per) / len(per),
        "per_pair_f": fs,
    }


def exact_block(pairs, lowercase):
    def norm(s):
        return (s.lower() if lowercase else s).strip()

    hits = sum(1 for h, r in pairs if norm(h) == norm(r))
    return {"lowercase": lowercase, "matches": hits, "percent": 100.0 * hits / len(pairs)}


def corpus_entry(name, pairs):
    return {
        "name": name,
        "hyps": [h for h, _ in pairs],
        "refs": [r for _, r in pairs],
        "bleu": [bleu_block(pairs, tok, lc) for tok in ("13a", "intl") for lc in (False, True)],
        "rouge_l": rouge_block(pairs),
        "exact": [exact_block(pairs, lc) for lc in (False, True)],
    }


def main():
    tok13a = Tokenizer13a()
    tokintl = TokenizerV14International()
    fixture = {
        "generator": "tests/golden/make_metric_golden.py",
        "versions": {
            "python": sys.version.split()[0],
            "sacrebleu": sacrebleu.__version__,
            "rouge_score": importlib.metadata.version("rouge-score"),
        },
        "corpora": [corpus_entry("mixed", MIXED)]
        + [corpus_entry(name, pairs) for name, pairs in SPECIAL.items()],
        "tokenize": [
            {
                "text": t,
                "13a": tok13a(t),
                "intl": tokintl(t),
                "rouge": rouge_tokenize.tokenize(t, None),
                "lower": t.lower(),
            }
            for t in TOKENIZE_CASES + [h for h, _ in MIXED] + [r for _, r in MIXED]
        ],
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT}")
    for c in fixture["corpora"]:
        b = c["bleu"]
        print(c["name"], [round(x["score"], 4) for x in b], round(c["rouge_l"]["mean_f"], 4))


if __name__ == "__main__":
    main()
