"""Questions and answers as text: tokenisation, answer normalisation, vocabularies.

Questions follow the usual VQA preprocessing: lower-case, punctuation other than an apostrophe
inside a word becomes a space, the possessive ``'s`` is its own token, and the question is cut
at ``max_len`` tokens (14 in most VQA 2.0 models). Answers are normalised the way the official
evaluation compares them: lower-case, punctuation removed (but a decimal point between digits
kept), number words written as digits, the articles ``a``, ``an``, ``the`` dropped, and a few
common contractions given their apostrophe.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from varattn.errors import VarattnError

PAD, UNK = "<pad>", "<unk>"

_QUESTION_PUNCT = re.compile(r"[^\w\s']|_")
_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hasnt": "hasn't", "havent": "haven't", "isnt": "isn't", "shouldnt": "shouldn't",
    "wasnt": "wasn't", "werent": "weren't", "wont": "won't", "wouldnt": "wouldn't", "youre": "you're",
    "thats": "that's", "whats": "what's", "im": "i'm", "ive": "i've", "lets": "let's",
}
_ANSWER_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:]")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")  # a full stop that is not a decimal point


def tokenize_question(text: str, max_len: int | None = None) -> list[str]:
    """``"What's the man's shirt color?"`` -> ``["what's", 'the', 'man', "'s", 'shirt', 'color']``."""
    text = _QUESTION_PUNCT.sub(" ", text.lower())
    tokens = []
    for word in text.split():
        word = word.strip("'")
        if not word:
            continue
        if word.endswith("'s") and len(word) > 2 and word[:-2] not in ("what", "it", "that", "there", "who", "where",
                                                                         "here", "how", "let", "he", "she"):
            tokens.extend([word[:-2], "'s"])
        else:
            tokens.append(word)
    return tokens[:max_len] if max_len else tokens


def normalize_answer(text: str) -> str:
    """An annotator's answer in the form the VQA evaluation compares (``"Two dogs."`` -> ``"2 dogs"``)."""
    text = text.lower().replace("\n", " ").replace("\t", " ").strip()
    text = re.sub(r"(?<=\d),(?=\d)", "", text)  # 1,000 -> 1000
    text = _ANSWER_PUNCT.sub(" ", text)
    text = _PERIOD.sub("", text)
    words = []
    for word in text.split():
        word = _NUMBERS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


class Vocab:
    """A string <-> index map stored as text, one entry per line (index = line number).

    ``specials`` (e.g. ``<pad> <unk>`` for question words, none for answers) come first.
    """

    def __init__(self, items: Iterable[str], specials: tuple[str, ...] = ()):
        self.itos: list[str] = list(items)
        self.specials = specials
        if tuple(self.itos[: len(specials)]) != specials:
            raise VarattnError(f"a vocabulary must start with {' '.join(specials)}")
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise VarattnError("a vocabulary lists the same entry twice")

    @classmethod
    def build(cls, counts: Counter, min_count: int = 1, max_size: int | None = None,
              specials: tuple[str, ...] = ()) -> Vocab:
        """Entries seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        ranked = sorted((s for s, c in counts.items() if c >= min_count and s not in specials),
                        key=lambda s: (-counts[s], s))
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(specials))]
        return cls([*specials, *ranked], specials)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, item: str) -> bool:
        return item in self.stoi

    def index(self, item: str, default: int | None = None) -> int | None:
        return self.stoi.get(item, default)

    def encode(self, tokens: list[str]) -> list[int]:
        """Token ids, unknown tokens as ``<unk>`` (the vocabulary must have one)."""
        unk = self.stoi[UNK]
        return [self.stoi.get(t, unk) for t in tokens]

    def save(self, path: str | Path) -> None:
        from varattn.fileio import atomic_write_text

        if any("\n" in s for s in self.itos):
            raise VarattnError("a vocabulary entry contains a line break")
        atomic_write_text(path, "".join(s + "\n" for s in self.itos))

    @classmethod
    def load(cls, path: str | Path, specials: tuple[str, ...] = ()) -> Vocab:
        path = Path(path)
        if not path.is_file():
            raise VarattnError(f"vocabulary file not found: {path}")
        text = path.read_text(encoding="utf-8")
        return cls(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), specials)


def question_vocab(questions: Iterable[list[str]], min_count: int = 1) -> Vocab:
    """Question words of the training questions, with ``<pad>`` (0) and ``<unk>`` (1) first."""
    return Vocab.build(Counter(t for q in questions for t in q), min_count, specials=(PAD, UNK))
