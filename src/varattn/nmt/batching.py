"""Turning tokenised sentence pairs into padded, length-bucketed batches."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from varattn.nmt.vocab import Vocab


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


def collate(
    src_ids: list[list[int]], tgt_ids: list[list[int]] | None, vocab_tgt: Vocab | None, index: list[int]
) -> Batch:
    """Pad id lists into a ``Batch``; ``tgt_ids`` may be None (translation: a 0-length target)."""
    b = len(src_ids)
    s = max(1, max(len(x) for x in src_ids))
    src = torch.zeros(b, s, dtype=torch.long)
    for i, ids in enumerate(src_ids):
        src[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    src_lengths = torch.tensor([max(1, len(x)) for x in src_ids])
    if tgt_ids is None:
        tgt_ids = [[] for _ in src_ids]
    bos, eos = (2, 3) if vocab_tgt is None else (vocab_tgt.bos, vocab_tgt.eos)
    t = max(len(y) for y in tgt_ids) + 1
    tgt = torch.zeros(b, t + 1, dtype=torch.long)
    for i, ids in enumerate(tgt_ids):
        seq = [bos, *ids, eos]
        tgt[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    lengths = torch.tensor([len(y) + 1 for y in tgt_ids])
    tgt_mask = torch.arange(t)[None, :] < lengths[:, None]
    return Batch(src, src_lengths, tgt, tgt_mask, torch.tensor(index, dtype=torch.long))


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
