"""Every batching of the NMT task: padding id lists, grouping pairs by length, cutting lists into batches.

* :func:`pad_ids`: id lists -> a ``(B, S)`` tensor padded with ``<pad>`` and the lengths;
* :func:`collate`: sentence pairs -> a teacher-forcing :class:`Batch`;
* :func:`index_batches`: positions (optionally sorted by a key, e.g. length) cut into batches
  of at most ``batch_size`` (inference: scoring, alignment, translation);
* :func:`bucket_batches`: training batches of similar length, by sentences or by tokens.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from varattn.nmt.vocab import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Batch:
    """One padded batch (sorted by nothing: the encoder packs sequences itself).

    Attributes:
        src: ``(B, S)`` source ids, ``<pad>`` after each sentence; no BOS/EOS.
        src_lengths: ``(B,)`` real source lengths (>= 1).
        tgt: ``(B, T + 1)`` ``<s> y_1 .. y_n </s>`` padded; ``tgt[:, :-1]`` is the decoder
            input and ``tgt[:, 1:]`` the gold output.
        tgt_mask: ``(B, T)`` True at real output tokens (``</s>`` included).
        index: ``(B,)`` position of each pair in the corpus it came from.
    """

    src: Tensor
    src_lengths: Tensor
    tgt: Tensor
    tgt_mask: Tensor
    index: Tensor

    @property
    def tgt_in(self) -> Tensor:
        return self.tgt[:, :-1]

    @property
    def tgt_out(self) -> Tensor:
        return self.tgt[:, 1:]

    @property
    def source_mask(self) -> Tensor:
        """``(B, S)`` True at real source positions."""
        return torch.arange(self.src.shape[1], device=self.src.device)[None, :] < self.src_lengths[:, None]

    @property
    def num_tokens(self) -> int:
        return int(self.tgt_mask.sum())

    def __len__(self) -> int:
        return self.src.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.src, self.src_lengths, self.tgt, self.tgt_mask, self.index)))


def pad_ids(ids: Sequence[Sequence[int]], min_width: int = 0) -> tuple[Tensor, Tensor]:
    """Id lists -> ``(B, W)`` long tensor padded with ``<pad>`` (``W`` = the longest, at least
    ``min_width``) and their lengths ``(B,)``."""
    width = max(min_width, max((len(x) for x in ids), default=0))
    out = torch.full((len(ids), width), PAD_ID, dtype=torch.long)
    for i, row in enumerate(ids):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out, torch.tensor([len(x) for x in ids], dtype=torch.long)


def collate(src_ids: list[list[int]], tgt_ids: list[list[int]] | None, index: list[int] | None = None) -> Batch:
    """Pad id lists into a ``Batch``; ``tgt_ids`` may be None (translation: a 0-length target).

    ``index`` defaults to ``0 .. B-1``. An empty source gets length 1 (one ``<pad>``).
    """
    src, src_lengths = pad_ids(src_ids, min_width=1)
    src_lengths = src_lengths.clamp_min(1)
    if tgt_ids is None:
        tgt_ids = [[] for _ in src_ids]
    tgt, lengths = pad_ids([[BOS_ID, *ids, EOS_ID] for ids in tgt_ids])  # (B, T + 1)
    lengths = lengths - 1  # output tokens, </s> included
    tgt_mask = torch.arange(tgt.shape[1] - 1)[None, :] < lengths[:, None]  # (B, T)
    index = list(range(len(src_ids))) if index is None else index
    return Batch(src, src_lengths, tgt, tgt_mask, torch.tensor(index, dtype=torch.long))


def index_batches(indices: Iterable[int], batch_size: int, key: Callable[[int], Any] | None = None) -> list[list[int]]:
    """``indices`` (stably sorted by ``key`` when given) cut into consecutive lists of at most ``batch_size``.

    Sorting by length keeps the padding in each batch small; callers put results back in
    input order through the indices.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(indices, key=key) if key is not None else list(indices)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def bucket_batches(
    src_ids: list[list[int]],
    tgt_ids: list[list[int]],
    batch_size: int = 6,
    batch_tokens: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
) -> list[list[int]]:
    """Group pair indices into batches of similar length.

    Pairs are sorted by (target length, source length) with random tie-breaking, cut into
    batches of ``batch_size`` sentences, or, with ``batch_tokens``, of at most that many
    padded target tokens; the batch order is shuffled with ``seed``. Returns index lists.
    """
    rng = random.Random(seed)
    order = list(range(len(src_ids)))
    keys = {i: (len(tgt_ids[i]), len(src_ids[i]), rng.random() if shuffle else i) for i in order}
    order.sort(key=keys.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        length = len(tgt_ids[i]) + 1
        if batch_tokens is not None:
            full = current and max(longest, length) * (len(current) + 1) > batch_tokens
        else:
            full = len(current) >= batch_size
        if full:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches
