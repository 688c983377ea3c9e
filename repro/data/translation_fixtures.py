"""A tiny English-German parallel corpus in Multi30k's on-disk layout, for tests and smoke runs.

Sentences are built from a small lexicon with German word order and agreement (der/die/das,
verb second), so a model has to learn a real mapping, and are distinct so BLEU on them is
meaningful. Files: `<split>.en.gz` / `<split>.de.gz` for train, val and test.

    python -m repro.data.translation_fixtures DIR [--train N] [--test N]
"""
from __future__ import annotations

import argparse
import gzip
import itertools
from pathlib import Path

import numpy as np

# English noun -> (German noun, nominative article, accusative article)
NOUNS = {
    "man": ("Mann", "ein", "einen"), "woman": ("Frau", "eine", "eine"), "dog": ("Hund", "ein", "einen"),
    "child": ("Kind", "ein", "ein"), "girl": ("Mädchen", "ein", "ein"), "boy": ("Junge", "ein", "einen"),
    "cat": ("Katze", "eine", "eine"), "horse": ("Pferd", "ein", "ein"),
}
VERBS = {"sees": "sieht", "follows": "folgt", "pulls": "zieht", "watches": "beobachtet"}
PLACES = {"in the park": "im Park", "on the street": "auf der Straße", "at the beach": "am Strand",
          "in the snow": "im Schnee"}


def fixture_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n distinct (English, German) pairs "a S V a O P." in a seeded random order."""
    combos = [c for c in itertools.product(NOUNS, VERBS, NOUNS, PLACES) if c[0] != c[2]]
    if n > len(combos):
        raise ValueError(f"the fixture lexicon makes at most {len(combos)} pairs, asked for {n}")
    rng = np.random.default_rng(seed)
    pairs = []
    for i in rng.choice(len(combos), n, replace=False):
        subject, verb, obj, place = combos[i]
        en = f"{'an' if subject[0] in 'aeiou' else 'a'} {subject} {verb} a {obj} {place} ."
        s_de, s_art, _ = NOUNS[subject]
        o_de, _, o_art = NOUNS[obj]
        de = f"{s_art.capitalize()} {s_de} {VERBS[verb]} {o_art} {o_de} {PLACES[place]} ."
        pairs.append((en, de))
    return pairs


def write_parallel(root, split: str, pairs: list[tuple[str, str]], langs=("en", "de")) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for side, lang in enumerate(langs):
        with gzip.open(root / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
            f.writelines(pair[side] + "\n" for pair in pairs)


def write_fixture(root, n_train: int = 64, n_test: int = 64) -> None:
    """train = the first n_train pairs; val and test_2016_flickr = the first n_test of them (an
    overfitting check needs test sentences the model has seen)."""
    pairs = fixture_pairs(max(n_train, n_test))
    write_parallel(root, "train", pairs[:n_train])
    write_parallel(root, "val", pairs[:n_test])
    write_parallel(root, "test_2016_flickr", pairs[:n_test])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--test", type=int, default=64)
    args = parser.parse_args()
    write_fixture(args.root, args.train, args.test)


if __name__ == "__main__":
    main()
