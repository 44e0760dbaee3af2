"""Vocabularies: a string <-> index map stored as text, one entry per line (index = line number).

Both tasks use this class: translation's token vocabularies (``varattn.nmt.vocab`` adds its four
special tokens) and VQA's question words and answers. ``specials`` come first, in their order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from varattn.errors import VarattnError

UNK = "<unk>"


def ranked(counts: Counter, min_count: int = 1, max_size: int | None = None,
           specials: tuple[str, ...] = ()) -> list[str]:
    """``specials``, then the entries seen at least ``min_count`` times, most frequent first (ties alphabetical),
    at most ``max_size`` in all."""
    entries = sorted((s for s, c in counts.items() if c >= min_count and s not in specials),
                     key=lambda s: (-counts[s], s))
    if max_size is not None:
        entries = entries[: max(0, max_size - len(specials))]
    return [*specials, *entries]


def read_entries(path: str | Path) -> list[str]:
    """The entries of a vocabulary file, one a line; a one-line error if there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise VarattnError(f"vocabulary file not found: {path}")
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


class Vocab:
    """A string <-> index map whose first entries are ``specials`` (e.g. ``<pad> <unk>``; none for answers)."""

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
        return cls(ranked(counts, min_count, max_size, specials), specials)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, item: str) -> bool:
        return item in self.stoi

    def index(self, item: str, default: int | None = None) -> int | None:
        return self.stoi.get(item, default)

    def encode(self, tokens: list[str]) -> list[int]:
        """Entry ids, unknown entries as ``<unk>`` (the vocabulary must have one)."""
        unk = self.stoi[UNK]
        return [self.stoi.get(t, unk) for t in tokens]

    def save(self, path: str | Path) -> None:
        """Write the entries, one a line, atomically."""
        from varattn.fileio import atomic_write_text

        if any("\n" in s for s in self.itos):
            raise VarattnError("a vocabulary entry contains a line break")
        atomic_write_text(path, "".join(s + "\n" for s in self.itos))

    @classmethod
    def load(cls, path: str | Path, specials: tuple[str, ...] = ()) -> Vocab:
        return cls(read_entries(path), specials)


__all__ = ["UNK", "Vocab", "ranked", "read_entries"]
