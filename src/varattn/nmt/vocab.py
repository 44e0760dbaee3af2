"""Token vocabularies, stored as plain text (one token per line, index = line number)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from varattn.errors import VarattnError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = (PAD, UNK, BOS, EOS)
#: the ids of the special tokens: every vocabulary starts with ``SPECIALS`` in this order
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(SPECIALS))


class Vocab:
    """A token <-> index map whose first four entries are ``<pad> <unk> <s> </s>``."""

    def __init__(self, tokens: Iterable[str]):
        self.itos: list[str] = list(tokens)
        if tuple(self.itos[: len(SPECIALS)]) != SPECIALS:
            raise VarattnError(f"a vocabulary must start with {' '.join(SPECIALS)}")
        self.stoi = {tok: i for i, tok in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise VarattnError("a vocabulary lists the same token twice")

    pad = property(lambda self: PAD_ID)
    unk = property(lambda self: UNK_ID)
    bos = property(lambda self: BOS_ID)
    eos = property(lambda self: EOS_ID)

    @classmethod
    def build(cls, sentences: Iterable[list[str]], max_size: int | None = None, min_freq: int = 1) -> Vocab:
        """Every token of ``sentences`` seen at least ``min_freq`` times, most frequent first."""
        counts = Counter(tok for sent in sentences for tok in sent)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq and t not in SPECIALS),
                        key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(SPECIALS))]
        return cls([*SPECIALS, *ranked])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.stoi.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens for ``ids``, stopping at ``</s>`` and skipping ``<pad>``/``<s>``."""
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID):
                continue
            out.append(self.itos[i])
        return out

    def save(self, path: str | Path) -> None:
        from varattn.fileio import atomic_write_text

        atomic_write_text(path, "\n".join(self.itos) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        path = Path(path)
        if not path.is_file():
            raise VarattnError(f"vocabulary file not found: {path}")
        text = path.read_text(encoding="utf-8")
        return cls(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"))
