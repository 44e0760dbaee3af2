"""The marks that subword segmentations leave in text, defined once.

* ``BPE_MARK`` (``@@``): subword-nmt's continuation mark; a piece ending in it continues into
  the next piece (``"ge@@ schichte"`` is the word ``geschichte``).
* ``SENTENCEPIECE_SPACE`` (``▁``, U+2581): sentencepiece's word-start mark.
"""

from __future__ import annotations

from collections.abc import Sequence

BPE_MARK = "@@"
SENTENCEPIECE_SPACE = "\u2581"  # "▁", LOWER ONE EIGHTH BLOCK


def remove_bpe(line: str) -> str:
    """Join BPE pieces into words: ``"the cat@@ s sat"`` → ``"the cats sat"`` (a final mark is dropped)."""
    return line.replace(BPE_MARK + " ", "").removesuffix(BPE_MARK)


def has_bpe_marks(lines: Sequence[str], sample: int = 2000) -> bool:
    """Whether any of the first ``sample`` lines carries a BPE continuation mark."""
    return any(BPE_MARK + " " in line or line.endswith(BPE_MARK) for line in lines[:sample])
