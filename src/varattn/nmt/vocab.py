"""Translation vocabularies: :class:`varattn.vocab.Vocab` whose first four entries are ``<pad> <unk> <s> </s>``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from varattn import vocab

PAD, UNK, BOS, EOS = "<pad>", vocab.UNK, "<s>", "</s>"
SPECIALS = (PAD, UNK, BOS, EOS)
#: the ids of the special tokens: every vocabulary starts with ``SPECIALS`` in this order
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(SPECIALS))


class Vocab(vocab.Vocab):
    """A token <-> index map whose first four entries are ``<pad> <unk> <s> </s>``."""

    def __init__(self, tokens: Iterable[str]):
        super().__init__(tokens, SPECIALS)

    pad = property(lambda self: PAD_ID)
    unk = property(lambda self: UNK_ID)
    bos = property(lambda self: BOS_ID)
    eos = property(lambda self: EOS_ID)

    @classmethod
    def build(cls, sentences: Iterable[list[str]], max_size: int | None = None, min_freq: int = 1) -> Vocab:
        """Every token of ``sentences`` seen at least ``min_freq`` times, most frequent first."""
        return cls(vocab.ranked(Counter(tok for sent in sentences for tok in sent), min_freq, max_size, SPECIALS))

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

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        return cls(vocab.read_entries(path))
