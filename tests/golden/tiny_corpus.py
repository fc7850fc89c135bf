"""Writes the small, deterministic JSONL corpus behind tests/fixtures/tiny_unigram/.

Usage: python tests/golden/tiny_corpus.py tests/fixtures/tiny_unigram/corpus.jsonl
Mixed task-style records: English/German phrases, digits, punctuation, accented letters and a
few characters that NFKC rewrites (full-width letters, the "fi" ligature, circled digits).
"""
import json
import random
import sys

SUBJECTS = ["the cat", "a small dog", "my old friend", "the teacher", "der Hund", "die Katze", "Jürgen", "Zoë"]
VERBS = ["sees", "likes", "walks past", "paints", "sieht", "mag", "findet", "ﬁnds"]
OBJECTS = ["the red house", "a green tree", "das Haus", "den Baum", "ｔｈｅ ｍｏｏｎ", "①② apples", "café crème", "Straße 12"]
ENDINGS = [".", "!", "?", ", isn't it?", " today.", " again .", "; so it goes.", ""]


def main(path):
    rng = random.Random(20261126)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(400):
            src = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ENDINGS)}"
            tgt = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {i}{rng.choice(ENDINGS)}"
            f.write(json.dumps({"src": "Translate: " + src, "tgt": tgt}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
