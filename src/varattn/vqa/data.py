"""Question sets, the regions they look at, and batches.

A ``QuestionSet`` holds the questions of one split (encoded words, image ids, in-vocabulary
answers with their annotator counts). A region source gives the model what it looks at for a
list of image ids: raw pixels (easy-VQA, where a CNN trained with the rest makes the regions)
or precomputed region features with a mask (VQA 2.0). A ``Batch`` is the tensors of a few
questions; the answers in it are either every in-vocabulary annotator answer (evaluation) or
one answer per question sampled in proportion to its annotator count (training, as the paper
does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from varattn.errors import VarattnError


@dataclass
class QuestionSet:
    """The questions of one split.

    Attributes:
        question_ids: one id per question (the data set's, or the position for easy-VQA).
        texts: the questions as written.
        words: encoded question tokens (possibly empty lists are refused by ``check``).
        image_ids: the image each question is about (keys of the region source).
        answers: per question, ``(answer index, annotator count)`` for every answer in the
            answer vocabulary that an annotator gave; may be empty (no in-vocabulary answer).
        annotators: per question, how many annotators answered (1 for easy-VQA, 10 for VQA 2.0).
        answer_types: per question, its answer type for the per-type accuracy (VQA 2.0's
            ``answer_type``: ``yes/no``, ``number``, ``other``; easy-VQA: ``yes/no``, ``shape``, ``color``).
    """

    question_ids: list
    texts: list[str]
    words: list[list[int]]
    image_ids: list
    answers: list[list[tuple[int, int]]]
    annotators: list[int]
    answer_types: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> QuestionSet:
        pick = list(indices)
        return QuestionSet([self.question_ids[i] for i in pick], [self.texts[i] for i in pick],
                           [self.words[i] for i in pick], [self.image_ids[i] for i in pick],
                           [self.answers[i] for i in pick], [self.annotators[i] for i in pick],
                           [self.answer_types[i] for i in pick] if self.answer_types else [])

    def answerable(self) -> list[int]:
        """Indices of the questions with at least one in-vocabulary answer."""
        return [i for i, a in enumerate(self.answers) if a]

    def sample_answers(self, indices: Sequence[int], rng: np.random.Generator) -> list[int]:
        """One answer per question, drawn with probability proportional to its annotator count."""
        out = []
        for i in indices:
            candidates = self.answers[i]
            if len(candidates) == 1:
                out.append(candidates[0][0])
                continue
            counts = np.array([c for _, c in candidates], dtype=np.float64)
            out.append(candidates[int(rng.choice(len(candidates), p=counts / counts.sum()))][0])
        return out


def vqa_score(counts: Tensor, annotators: Tensor) -> Tensor:
    """The VQA accuracy of an answer that ``counts`` annotators out of ``annotators`` gave.

    ``min(counts / 3, 1)`` (the paper's metric; the official evaluation also averages it over the
    ten leave-one-annotator-out subsets, which changes it by well under a point). With fewer than
    three annotators the threshold is their number, so a single-annotator data set (easy-VQA) gets
    plain accuracy.
    """
    threshold = annotators.clamp(max=3).clamp(min=1).to(counts.dtype)
    return (counts / threshold).clamp(max=1.0)


class RegionSource:
    """What the model looks at for a list of image ids (see ``PixelSource``, ``FeatureSource``)."""

    def gather(self, image_ids: Sequence) -> dict[str, Tensor]:
        """Inputs of ``VQAModel.encode`` for these images (``images``, or ``features`` and ``region_mask``)."""
        raise NotImplementedError

    def missing(self, image_ids: Sequence) -> list:
        """The ids among ``image_ids`` this source has nothing for."""
        raise NotImplementedError


class PixelSource(RegionSource):
    """Images as one ``(N, H, W, 3)`` uint8 array and an id -> row map."""

    def __init__(self, pixels: np.ndarray, ids: Sequence):
        self.pixels = torch.from_numpy(np.ascontiguousarray(pixels))
        self.rows = {key: row for row, key in enumerate(ids)}

    def gather(self, image_ids: Sequence) -> dict[str, Tensor]:
        rows = torch.tensor([self.rows[key] for key in image_ids], dtype=torch.long)
        return {"images": self.pixels.index_select(0, rows)}  # (B, H, W, 3) uint8

    def missing(self, image_ids: Sequence) -> list:
        return [key for key in image_ids if key not in self.rows]


class FeatureSource(RegionSource):
    """Precomputed region features from a ``varattn.vqa.features`` store, padded to ``max_regions``."""

    def __init__(self, store, max_regions: int | None = None):
        self.store = store
        self.max_regions = max_regions

    def gather(self, image_ids: Sequence) -> dict[str, Tensor]:
        items = [self.store.get(key) for key in image_ids]
        limit = self.max_regions or max(f.shape[0] for f, _ in items)
        r = min(limit, max(f.shape[0] for f, _ in items))
        features = torch.zeros(len(items), r, self.store.dim)  # (B, R, D)
        mask = torch.zeros(len(items), r, dtype=torch.bool)  # (B, R)
        for b, (feats, _) in enumerate(items):
            k = min(r, feats.shape[0])
            features[b, :k] = torch.from_numpy(np.asarray(feats[:k], dtype=np.float32))
            mask[b, :k] = True
        return {"features": features, "region_mask": mask}

    def missing(self, image_ids: Sequence) -> list:
        return [key for key in image_ids if not self.store.has(key)]


def check_images(questions: QuestionSet, source: RegionSource, what: str) -> None:
    """Refuse ``questions`` if one of them is about an image ``source`` has no regions for."""
    missing = source.missing(list(dict.fromkeys(questions.image_ids)))
    if missing:
        first = missing[0]
        q = questions.question_ids[questions.image_ids.index(first)]
        raise VarattnError(f"{what}: question {q} is about image {first}, which has no features "
                           f"({len(missing)} image(s) missing)")


@dataclass
class BatchSpec:
    """A batch before its tensors are built: question indices and, for training, sampled answers."""

    index: list[int]
    answers: list[int] | None = None


@dataclass
class Batch:
    """The tensors of a few questions.

    Attributes:
        index: ``(B,)`` positions of the questions in their ``QuestionSet``.
        words: ``(B, L)`` int64 question tokens, 0 after the end.
        lengths: ``(B,)`` int64 question lengths (at least 1).
        regions: ``images (B, H, W, 3)`` uint8, or ``features (B, R, D)`` with ``region_mask (B, R)``.
        answers: ``(B, T)`` int64 candidate answers (T = 1 for a sampled training answer), 0 at padding.
        answer_mask: ``(B, T)`` bool, True at real candidates.
        weights: ``(B, T)`` float: annotator counts of the candidates, normalised per question (0 at padding).
        scores: ``(B, T)`` float: the VQA accuracy each candidate would earn.
        types: the questions' answer types (empty when the data has none).
    """

    index: list[int]
    words: Tensor
    lengths: Tensor
    regions: dict[str, Tensor]
    answers: Tensor
    answer_mask: Tensor
    weights: Tensor
    scores: Tensor
    types: list[str] = field(default_factory=list)

    def to(self, device: torch.device) -> Batch:
        move = {k: v.to(device) for k, v in self.regions.items()}
        return Batch(self.index, self.words.to(device), self.lengths.to(device), move, self.answers.to(device),
                     self.answer_mask.to(device), self.weights.to(device), self.scores.to(device), self.types)


def make_batch(questions: QuestionSet, spec: BatchSpec, source: RegionSource) -> Batch:
    """Build the tensors of ``spec``: every in-vocabulary candidate, or the sampled answers."""
    index = spec.index
    lengths = [max(1, len(questions.words[i])) for i in index]
    words = torch.zeros(len(index), max(lengths), dtype=torch.long)  # (B, L)
    for b, i in enumerate(index):
        w = questions.words[i]
        if w:
            words[b, : len(w)] = torch.tensor(w, dtype=torch.long)
        else:
            words[b, 0] = 1  # an empty question reads as one unknown word
    if spec.answers is not None:
        candidates = [[(a, dict(questions.answers[i]).get(a, 0))] for i, a in zip(index, spec.answers)]
    else:
        candidates = [questions.answers[i] for i in index]
    t = max(1, max(len(c) for c in candidates))
    answers = torch.zeros(len(index), t, dtype=torch.long)  # (B, T)
    counts = torch.zeros(len(index), t)  # (B, T)
    mask = torch.zeros(len(index), t, dtype=torch.bool)
    for b, cand in enumerate(candidates):
        for j, (a, c) in enumerate(cand):
            answers[b, j], counts[b, j], mask[b, j] = a, float(c), True
    annotators = torch.tensor([questions.annotators[i] for i in index], dtype=torch.float32)
    totals = counts.sum(1, keepdim=True)
    weights = torch.where(totals > 0, counts / totals.clamp(min=1e-9), torch.zeros_like(counts))
    scores = vqa_score(counts, annotators.unsqueeze(1)) * mask
    regions = source.gather([questions.image_ids[i] for i in index])
    types = [questions.answer_types[i] for i in index] if questions.answer_types else []
    return Batch(list(index), words, torch.tensor(lengths, dtype=torch.long), regions, answers, mask, weights,
                 scores, types)
