"""The built-in synthetic translation task (the default corpus of ``varattn train``).

A small artificial "language pair" that an attention LSTM can learn on a laptop CPU in a couple
of minutes, with known gold word alignments, so that translation quality (perplexity, BLEU) and
alignment quality (AER) can both be checked without downloading anything.

The language (fixed by the *language seed*)
-------------------------------------------
* 32 source word types in six classes: 3 ``DET`` (articles), 6 ``ADJ``, 10 ``NOUN``, 8 ``VERB``,
  3 ``PREP`` and 2 ``ADV``.  Which pseudo-word belongs to which class is drawn from the
  language seed.
* Source words are lowercase pseudo-words built from open syllables, so they always end in a
  vowel (``"ba"``, ``"kelo"``).  Target words use a disjoint consonant set and always end in a
  consonant (``"vux"``, ``"hozef"``); no string is both a source and a target word.
* A word-for-word dictionary, also drawn from the language seed:

  - every ``DET`` is **deleted**: it produces no target word and has no gold link;
  - 5 content words (2 nouns, 2 verbs, 1 adjective) are **one-to-many**: each produces two
    target words, in a fixed order;
  - every other word produces exactly one target word.

  Every non-deleted source word has its own target word(s): no target word is shared.

The translation rule (a deterministic function of the source)
-------------------------------------------------------------
Read the source left to right.  An ``ADJ`` immediately followed by a ``NOUN`` is **swapped**:
the noun's translation comes first, then the adjective's.  Every other word is translated in
place.  (``DET ADJ NOUN`` → ``NOUN' ADJ'``; a predicative adjective, as in ``NP VERB ADJ``, is
not followed by a noun and keeps its place.)  The target is therefore a function of the source
alone, and a perfect model reaches perplexity 1 and BLEU 100.

Gold alignments link each target word to exactly the source word it came from, as 0-based
``(src_index, tgt_index)`` pairs; deleted source words are unlinked, a one-to-many word has two
links, and the swap makes links cross.

The sentences (fixed by the *corpus seed*)
------------------------------------------
Sentences follow a small grammar, with ``NP = [DET] [ADJ] NOUN``::

    S = NP VERB [NP | ADJ] [PREP NP] [ADV]

each optional part drawn independently, each word uniformly from its class; a sentence with
fewer than 3 or more than 10 source words is drawn again.  Sentence lengths are therefore 3-10
source words (about 5.5 on average).

All randomness comes from ``random.Random`` instances seeded explicitly; the global random
state is never touched, so the corpus is identical across runs, platforms and processes.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from varattn.errors import VarattnError
from varattn.nmt.align import Link, format_pharaoh, parse_pharaoh

# Class sizes of the source language (32 word types in all).
CLASS_SIZES: dict[str, int] = {"DET": 3, "ADJ": 6, "NOUN": 10, "VERB": 8, "PREP": 3, "ADV": 2}
# How many words of each class translate to two target words.
ONE_TO_MANY: dict[str, int] = {"NOUN": 2, "VERB": 2, "ADJ": 1}
# Classes whose words are deleted (translate to nothing).
DELETED_CLASSES = ("DET",)

MIN_LEN = 3
MAX_LEN = 10

DEFAULT_SPLIT_SIZES = {"train": 6000, "valid": 300, "test": 300}

_SRC_CONSONANTS = "bdgklmnprst"
_SRC_VOWELS = "aeiou"
_TGT_CONSONANTS = "fhjvwxz"
_TGT_VOWELS = "aeiouy"

# Grammar probabilities.
_P_DET = 0.5
_P_ADJ = 0.4
_P_OBJECT_NP = 0.6
_P_OBJECT_ADJ = 0.15
_P_PP = 0.35
_P_ADV = 0.3


@dataclass
class SyntheticPair:
    """One sentence pair: source tokens, target tokens and 0-based ``(src, tgt)`` gold links."""

    src: list[str]
    tgt: list[str]
    links: set[Link] = field(default_factory=set)

    def align_line(self) -> str:
        """The links as one Pharaoh line: sorted ``i-j`` tokens, 0-based, source first."""
        return format_pharaoh(self.links)


def _pseudo_word(rng: random.Random, consonants: str, vowels: str, closed: bool) -> str:
    """A pseudo-word of 1-3 consonant-vowel syllables; ``closed`` adds a final consonant."""
    n_syllables = rng.choice((1, 1, 2, 2, 2, 3)) if not closed else rng.choice((1, 1, 2, 2))
    word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(n_syllables))
    if closed:
        word += rng.choice(consonants)
    return word


def _unique_words(rng: random.Random, n: int, consonants: str, vowels: str, closed: bool) -> list[str]:
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        word = _pseudo_word(rng, consonants, vowels, closed)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _derived_seed(*parts: object) -> int:
    """A stable 63-bit integer seed from ``parts`` (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class SyntheticTask:
    """The synthetic language pair defined by ``seed`` (the *language seed*).

    Attributes
    ----------
    seed:
        The language seed.
    classes:
        ``{class name: [source words]}``.
    dictionary:
        ``{source word: tuple of target words}``; deleted words map to ``()``.
    """

    def __init__(self, seed: int = 0) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise VarattnError(f"synthetic language seed must be an integer, got {seed!r}")
        self.seed = seed
        rng = random.Random(seed)
        n_src = sum(CLASS_SIZES.values())
        src_words = _unique_words(rng, n_src, _SRC_CONSONANTS, _SRC_VOWELS, closed=False)
        rng.shuffle(src_words)

        self.classes: dict[str, list[str]] = {}
        start = 0
        for name, size in CLASS_SIZES.items():
            self.classes[name] = sorted(src_words[start : start + size])
            start += size
        self.word_class: dict[str, str] = {w: c for c, ws in self.classes.items() for w in ws}

        multi: set[str] = set()
        for name, count in ONE_TO_MANY.items():
            multi.update(rng.sample(self.classes[name], count))

        n_tgt = sum(
            0 if self.word_class[w] in DELETED_CLASSES else (2 if w in multi else 1) for w in src_words
        )
        tgt_words = _unique_words(rng, n_tgt, _TGT_CONSONANTS, _TGT_VOWELS, closed=True)
        rng.shuffle(tgt_words)

        self.dictionary: dict[str, tuple[str, ...]] = {}
        pos = 0
        for word in src_words:
            if self.word_class[word] in DELETED_CLASSES:
                self.dictionary[word] = ()
                continue
            width = 2 if word in multi else 1
            self.dictionary[word] = tuple(tgt_words[pos : pos + width])
            pos += width

    # ------------------------------------------------------------------ vocabulary views
    @property
    def src_vocab(self) -> list[str]:
        """All source word types, sorted."""
        return sorted(self.dictionary)

    @property
    def tgt_vocab(self) -> list[str]:
        """All target word types, sorted."""
        return sorted(t for ts in self.dictionary.values() for t in ts)

    @property
    def deleted_words(self) -> list[str]:
        """Source words that translate to nothing, sorted."""
        return sorted(w for w, ts in self.dictionary.items() if not ts)

    @property
    def one_to_many_words(self) -> list[str]:
        """Source words that translate to two target words, sorted."""
        return sorted(w for w, ts in self.dictionary.items() if len(ts) > 1)

    # ------------------------------------------------------------------ translation
    def translate(self, src_tokens: Sequence[str] | str) -> tuple[list[str], set[Link]]:
        """Translate a source sentence; returns ``(target tokens, gold links)``.

        ``src_tokens`` is a list of source words (a string is split on whitespace).  Unknown
        words raise :class:`VarattnError`.
        """
        tokens = src_tokens.split() if isinstance(src_tokens, str) else list(src_tokens)
        unknown = [w for w in tokens if w not in self.dictionary]
        if unknown:
            raise VarattnError(
                f"word(s) not in the synthetic source vocabulary (language seed {self.seed}): "
                + ", ".join(repr(w) for w in unknown[:5])
            )
        # The source positions in target order, after the ADJ NOUN -> NOUN ADJ swap.
        order: list[int] = []
        i = 0
        while i < len(tokens):
            if (
                i + 1 < len(tokens)
                and self.word_class[tokens[i]] == "ADJ"
                and self.word_class[tokens[i + 1]] == "NOUN"
            ):
                order.extend((i + 1, i))
                i += 2
            else:
                order.append(i)
                i += 1
        tgt: list[str] = []
        links: set[Link] = set()
        for i in order:
            for word in self.dictionary[tokens[i]]:
                links.add((i, len(tgt)))
                tgt.append(word)
        return tgt, links

    # ------------------------------------------------------------------ sentences
    def _noun_phrase(self, rng: random.Random) -> list[str]:
        words = []
        if rng.random() < _P_DET:
            words.append(rng.choice(self.classes["DET"]))
        if rng.random() < _P_ADJ:
            words.append(rng.choice(self.classes["ADJ"]))
        words.append(rng.choice(self.classes["NOUN"]))
        return words

    def _sentence(self, rng: random.Random) -> list[str]:
        while True:
            words = self._noun_phrase(rng)
            words.append(rng.choice(self.classes["VERB"]))
            r = rng.random()
            if r < _P_OBJECT_NP:
                words.extend(self._noun_phrase(rng))
            elif r < _P_OBJECT_NP + _P_OBJECT_ADJ:
                words.append(rng.choice(self.classes["ADJ"]))
            if rng.random() < _P_PP:
                words.append(rng.choice(self.classes["PREP"]))
                words.extend(self._noun_phrase(rng))
            if rng.random() < _P_ADV:
                words.append(rng.choice(self.classes["ADV"]))
            if MIN_LEN <= len(words) <= MAX_LEN:
                return words

    def generate(self, n: int, seed: int) -> list[SyntheticPair]:
        """``n`` sentence pairs drawn with ``random.Random(seed)`` (the *corpus seed*)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise VarattnError(f"number of synthetic sentences must be a non-negative integer, got {n!r}")
        rng = random.Random(seed)
        pairs = []
        for _ in range(n):
            src = self._sentence(rng)
            tgt, links = self.translate(src)
            pairs.append(SyntheticPair(src=src, tgt=tgt, links=links))
        return pairs

    def describe(self) -> str:
        """A human-readable listing of the language: classes and dictionary."""
        lines = [f"synthetic language (seed {self.seed})"]
        for name, words in self.classes.items():
            entries = []
            for w in words:
                ts = self.dictionary[w]
                entries.append(f"{w}->{'+'.join(ts) if ts else '(deleted)'}")
            lines.append(f"  {name:5s} " + " ".join(entries))
        lines.append("  rule: ADJ immediately followed by NOUN -> target order NOUN ADJ")
        return "\n".join(lines)


def make_splits(
    seed: int = 0,
    n_train: int = DEFAULT_SPLIT_SIZES["train"],
    n_valid: int = DEFAULT_SPLIT_SIZES["valid"],
    n_test: int = DEFAULT_SPLIT_SIZES["test"],
    language_seed: int = 0,
) -> dict[str, list[SyntheticPair]]:
    """Train / valid / test splits of the synthetic task.

    The language is ``SyntheticTask(language_seed)``; each split is generated with its own
    corpus seed derived from ``seed`` and the split name, so the splits are different samples
    (short sentences can still occur in more than one split, as in real data).
    """
    task = SyntheticTask(language_seed)
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    return {
        name: task.generate(n, _derived_seed("varattn-synthetic", seed, name)) for name, n in sizes.items()
    }


_README = """\
varattn synthetic translation task
==================================

Files (one sentence pair per line; line k of every file of a split is the same pair):

  <split>.src    source sentence, space-separated tokens
  <split>.tgt    target sentence, space-separated tokens
  <split>.align  gold word alignment: space-separated "i-j" links, 0-based,
                 source index first, sorted (Pharaoh format); an empty line
                 means no links

Splits: {splits}

Rules: every source word translates word-for-word through a fixed dictionary;
articles (DET) are deleted and unlinked; a few words translate to two target
words (two links from the same source word); an adjective immediately followed
by a noun swaps places with it in the target (crossing links).  The target is
a deterministic function of the source.  See varattn.nmt.corpora.synthetic for details.
"""


def write_splits(out_dir: str | os.PathLike[str], splits: Mapping[str, Sequence[SyntheticPair]]) -> Path:
    """Write ``<split>.src``, ``<split>.tgt``, ``<split>.align`` and ``README.txt`` to ``out_dir``.

    ``out_dir`` is created if needed; returns it as a :class:`~pathlib.Path`.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VarattnError(f"output path {str(out)!r} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, pairs in splits.items():
            with (
                open(out / f"{name}.src", "w", encoding="utf-8", newline="\n") as fs,
                open(out / f"{name}.tgt", "w", encoding="utf-8", newline="\n") as ft,
                open(out / f"{name}.align", "w", encoding="utf-8", newline="\n") as fa,
            ):
                for pair in pairs:
                    fs.write(" ".join(pair.src) + "\n")
                    ft.write(" ".join(pair.tgt) + "\n")
                    fa.write(format_pharaoh(pair.links) + "\n")
        sizes = ", ".join(f"{name} ({len(pairs)} pairs)" for name, pairs in splits.items())
        (out / "README.txt").write_text(_README.format(splits=sizes), encoding="utf-8")
    except OSError as exc:
        raise VarattnError(f"cannot write synthetic corpus to {str(out)!r}: {exc}") from exc
    return out


def read_split(data_dir: str | os.PathLike[str], name: str) -> list[SyntheticPair]:
    """Read back one split written by :func:`write_splits`."""
    base = Path(data_dir)
    texts = {}
    for ext in ("src", "tgt", "align"):
        path = base / f"{name}.{ext}"
        try:
            texts[ext] = path.read_text(encoding="utf-8").split("\n")
        except OSError as exc:
            raise VarattnError(f"cannot read {str(path)!r}: {exc}") from exc
        if texts[ext] and texts[ext][-1] == "":
            texts[ext].pop()
    counts = {ext: len(lines) for ext, lines in texts.items()}
    if len(set(counts.values())) != 1:
        raise VarattnError(f"split {name!r} in {str(base)!r} has unequal line counts: {counts}")
    return [
        SyntheticPair(src=s.split(), tgt=t.split(), links=parse_pharaoh(a))
        for s, t, a in zip(texts["src"], texts["tgt"], texts["align"])
    ]
