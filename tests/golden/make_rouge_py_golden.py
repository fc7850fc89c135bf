#!/usr/bin/env python3
"""Writes tests/golden/fixtures/rouge_py.json, the reference for `--metric rouge-l-py`
(src/metrics/rouge_py.rs, src/metrics/porter.rs; checked by tests/metrics_golden.rs).

Needs py-rouge 1.1 and NLTK (pip install py-rouge==1.1 nltk); nothing is downloaded at run time.

The scorer is py-rouge's `Rouge(metrics=["rouge-l"])` with its defaults (the paper's evaluation
code), with two changes, both recorded in the fixture:
- NLTK's `word_tokenize` normally first splits sentences with the Punkt model, a data file NLTK
  downloads separately. py-rouge only tokenizes text it has reduced to ASCII letters, digits,
  spaces and `_`, where Punkt finds no sentence end, so the script tokenizes each line as one
  sentence (`preserve_line=True`), which gives the same tokens without the download.
- py-rouge maps some words through a table it ships (WordNet's irregular forms and a list of
  special cases) before stemming. dlm-engine does not carry that table, so the reference scores
  are computed with the table emptied, and once more with a three-word table given to both sides.
  The scores with the package's own table are stored too (`with_package_table`), to show how far
  the two differ on these texts.

Pairs: the "mixed" corpus of fixtures/metrics.json (read from that file), the corpus below,
written by hand to reach stemming, contractions, "cannot", several lines and the length limit, and
seeded random multi-line pairs over a four-word vocabulary.
"""
import importlib.metadata
import json
import os
import random
import re
import sys

import nltk
from nltk.stem.porter import PorterStemmer
from rouge import Rouge

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "rouge_py.json")
SMALL_TABLE = {"children": "child", "went": "go", "mice": "mouse"}

HEADLINES = [
    ("minister says talks were constructive", "ministers said talking was constructive"),
    ("police arrested two men after the shootings", "two men arrested by police following shooting"),
    ("the children went home", "a child goes home"),
    ("mice ate the cheese", "the mouse eats cheese"),
    ("we cannot agree , they cannot", "they can not agree"),
    ("gonna wanna gotta gimme lemme", "going to want to got to give me let me"),
    ("relational conditional hopefulness generalizations", "relate condition hope general"),
    ("Controlling the OSCILLATORS' happiness", "controlled oscillator happy"),
    ("skies flies tries dying lying", "sky fly try die lie"),
    ("agreement agreed feed bled sing", "agree agreements feeding bleeding singing"),
    ("", "empty hypothesis"),
    ("empty reference", ""),
    ("line one says this\nline two says that", "line two says that\nline one says this"),
    ("a b c d\ne f", "a e b f c d"),
    ("repeat repeat repeat", "repeat\nrepeat\nrepeat\nrepeat"),
    ("\n\n  spaced   out \n", "spaced out"),
    ("x" * 700, "x" * 700),
    ("word " * 200, "word " * 100 + "other " * 100),
    (("alpha beta " * 40) + "\n" + ("gamma delta " * 40), ("alpha beta " * 35) + "\n" + ("gamma delta " * 40)),
    ("Grüße aus München, ÄRGER", "grusse aus munchen arger"),
    ("3 cats and 45 dogs in 2024", "45 dogs 3 cats 2024"),
    ("_cannot_ cannots uncannot", "cannot cannot cannot"),
    # The limit counts characters: the 665th starts "bcde" (cut to "bcde"), and a first line of
    # 664 characters leaves room for one character of the second.
    ("y" * 660 + " bcdefg", "bcde xyz"),
    ("q" * 664 + "\nzebra", "z zebra"),
]


def random_lines(seed, count):
    """Multi-line pairs over four words: many equal LCS paths, so py-rouge's tie-breaking and its
    per-token clipping decide which reference positions count."""
    rng = random.Random(seed)
    words = ["aaaa", "bbbb", "cccc", "dddd"]

    def text():
        return "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 3)))

    return [(text(), text()) for _ in range(count)]

# Words for the stemmer on its own (beside every token of the corpora).
WORDS = (
    "caresses ponies ties caress cats feed agreed plastered bled motoring sing conflated troubled sized "
    "hopping tanned falling hissing fizzed failing filing happy sky relational conditional rational "
    "valenci hesitanci digitizer conformabli radicalli differentli vileli analogousli vietnamization "
    "predication operator feudalism decisiveness hopefulness callousness formaliti sensitiviti "
    "sensibiliti triplicate formative formalize electriciti electrical hopeful goodness revival "
    "allowance inference airliner gyroscopic adjustable defensible irritant replacement adjustment "
    "dependent adoption homologou communism activate angulariti homologous effective bowdlerize "
    "probate rate cease controll roll generalizations oscillators syzygy toy enjoy enjoyment yyyy "
    "spy fly try dying lying eed bleed needed proceed exceeding 2024s abc1ing _cannot_s"
).split()


def tokenize_one_line(text, language="english"):
    return nltk.word_tokenize(text, language, preserve_line=True)


def scores(rouge, pairs, table):
    saved = Rouge.WORDNET_KEY_VALUE
    Rouge.WORDNET_KEY_VALUE = table
    try:
        per = [rouge.get_scores([h], [r])["rouge-l"] for h, r in pairs]
        mean = rouge.get_scores([h for h, _ in pairs], [r for _, r in pairs])["rouge-l"]
    finally:
        Rouge.WORDNET_KEY_VALUE = saved
    return {
        "per_pair": [[s["p"], s["r"], s["f"]] for s in per],
        "mean": [mean["p"], mean["r"], mean["f"]],
    }


def main():
    Rouge.tokenize_text = staticmethod(tokenize_one_line)
    rouge = Rouge(metrics=["rouge-l"])  # loads the package's table into Rouge.WORDNET_KEY_VALUE
    package_table = dict(Rouge.WORDNET_KEY_VALUE)
    with open(os.path.join(HERE, "fixtures", "metrics.json"), encoding="utf-8") as f:
        mixed = next(c for c in json.load(f)["corpora"] if c["name"] == "mixed")
    corpora = {"mixed": list(zip(mixed["hyps"], mixed["refs"])), "headlines": HEADLINES, "lines": random_lines(7, 60)}

    stemmer = PorterStemmer(PorterStemmer.ORIGINAL_ALGORITHM)
    words = set(WORDS)
    for pairs in corpora.values():
        for pair in pairs:
            for text in pair:
                words.update(re.sub("[^A-Za-z0-9]", " ", text.lower()).split())
    words = sorted(words)

    fixture = {
        "generator": "tests/golden/make_rouge_py_golden.py",
        "versions": {
            "python": sys.version.split()[0],
            "py-rouge": importlib.metadata.version("py-rouge"),
            "nltk": nltk.__version__,
        },
        "small_table": SMALL_TABLE,
        "stems": [[w, stemmer.stem(w)] for w in words],
        "corpora": [
            {
                "name": name,
                "hyps": [h for h, _ in pairs],
                "refs": [r for _, r in pairs],
                "no_table": scores(rouge, pairs, {}),
                "small_table": scores(rouge, pairs, SMALL_TABLE),
                "with_package_table": scores(rouge, pairs, package_table),
            }
            for name, pairs in corpora.items()
        ],
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    for c in fixture["corpora"]:
        print(c["name"], "mean F without table", c["no_table"]["mean"][2], "with the package's table", c["with_package_table"]["mean"][2])


if __name__ == "__main__":
    main()
