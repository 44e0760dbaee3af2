"""Predictors: what an output layer offers for prediction, the log-probabilities of *every* output word.

An emission scores the gold output; a predictor scores every output word, which is what decoding,
accuracy and answering need. The predictive *rule* (sum the alignment out, attend with the prior's
mean, or average over sampled alignments) belongs to the objective
(``Objective.predict_log_probs``); a predictor only evaluates the output layer. Shapes: ``N``
rows (target steps, questions; any leading shape where stated), ``S`` positions, ``V`` output words.

``ContextPredictor`` implements the protocol for outputs that read ``[query ; sum_i z_i x_i]``
(the family of ``ContextEmission``); ``ContextEmission.predictor()`` gives the teacher-forced one
of an alignment problem.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from varattn import kernels


class PredictiveHead(Protocol):
    """An output head (see ``OutputHead``) that can also give the whole output distribution."""

    def query_part(self, query: Tensor) -> Tensor:
        """``(..., Dq) -> (..., D)``."""
        ...

    def context_part(self, context: Tensor) -> Tensor:
        """``(..., Dc) -> (..., D)``; linear, no bias."""
        ...

    def log_probs(self, pre: Tensor) -> Tensor:
        """``(..., D) -> (..., V)`` log-probabilities of every output word."""
        ...

    def mixture(self, pre: Tensor, weights: Tensor, rows: Tensor, num_rows: int, chunk_elements: int = ...) -> Tensor:
        """``(num_rows, V)`` probabilities ``sum_k weights_k softmax(...)(pre_k)`` summed into ``rows``."""
        ...

    @property
    def num_classes(self) -> int:
        """``V``: the number of output words."""
        ...


class Predictor(Protocol):
    """The output layer's log-probabilities of every output word, for ``N`` rows over ``S`` positions."""

    def log_probs(self, weights: Tensor) -> Tensor:
        """Alignment weights ``(..., N, S)`` (rows sum to 1) -> ``(..., N, V)``: ``log f(x, z)``."""
        ...

    def log_probs_each(self) -> Tensor:
        """``(N, S, V)``: ``log f(x, i)`` at every single position ``i`` (any finite value at padding)."""
        ...

    def log_mixture(self, scores: Tensor) -> Tensor:
        """``(N, V)``: ``log sum_i p_i f(x, i)`` with ``p = softmax(scores)``, scores ``(N, S)`` ``-inf`` where
        ``p`` has no mass. ``mixture_from_each`` computes it from ``log_probs_each``; a predictor may sum
        only the positions with mass, or in probability space, as long as the result is this quantity."""
        ...


def mixture_from_each(predictor: Predictor, scores: Tensor) -> Tensor:
    """``(N, V)`` ``log sum_i softmax(scores)_i f(x, i)`` in log space from ``predictor.log_probs_each()``."""
    log_weights = torch.log_softmax(scores, -1)  # (N, S), -inf where there is no mass
    return torch.logsumexp(log_weights.unsqueeze(-1) + predictor.log_probs_each(), dim=-2)


class ContextPredictor:
    """Predictor of an output ``head([query ; sum_i z_i x_i])``, one query per row.

    Args:
        head: the output head (``PredictiveHead``).
        query: ``(N, Dq)`` one query per row.
        memory: ``(N, S, Dc)`` the source vectors ``x_i`` of each row.
        memory_pre: ``head.context_part(memory)`` ``(N, S, D)`` if the caller has it already.
        source_mask: ``(N, S)`` bool, True at real positions, or None; ``log_probs_each`` gives 0 elsewhere.

    ``log_probs`` attends first and projects the context (``head.context_part(sum_i z_i x_i)``);
    ``log_mixture`` sums in log space over every position (``mixture_from_each``).
    """

    def __init__(self, head: PredictiveHead, query: Tensor, memory: Tensor, memory_pre: Tensor | None = None,
                 source_mask: Tensor | None = None):
        self.head = head
        self.memory = memory
        self.source_mask = source_mask
        self.query_pre = head.query_part(query)  # (N, D)
        self._memory_pre = memory_pre

    @property
    def memory_pre(self) -> Tensor:
        """``(N, S, D)`` the head's linear part of every source vector, computed once."""
        if self._memory_pre is None:
            self._memory_pre = self.head.context_part(self.memory)
        return self._memory_pre

    def log_probs(self, weights: Tensor) -> Tensor:
        """``(..., N, S) -> (..., N, V)``."""
        context = torch.matmul(weights.unsqueeze(-2), self.memory).squeeze(-2)  # (..., N, Dc)
        return self.head.log_probs(self.query_pre + self.head.context_part(context))

    def log_probs_each(self) -> Tensor:
        """``(N, S, V)``; 0 outside ``source_mask``."""
        out = self.head.log_probs(self.query_pre.unsqueeze(-2) + self.memory_pre)  # (N, S, V)
        return out if self.source_mask is None else out * self.source_mask.unsqueeze(-1)

    def log_mixture(self, scores: Tensor) -> Tensor:
        """``(N, S) -> (N, V)``, in log space."""
        return mixture_from_each(self, scores)


class EmissionPredictor:
    """The teacher-forced predictor of a ``ContextEmission``: rows ``(B, T)``, the emission's own projections.

    Args:
        head: the emission's output head (``PredictiveHead``).
        query_pre: ``(B, T, D)`` the head's query part of every target step.
        memory_pre: ``(B, S, D)`` the head's context part of every source vector.
        target_mask: ``(B, T)`` bool; ``log_mixture`` skips target padding (``-inf`` rows there).
        source_mask: ``(B, S)`` bool or None (every position real).
        chunk_rows: the most (target row, source position) pairs of one chunk of ``log_mixture``.

    ``log_probs`` pushes the weights through the linear part (``sum_i z_i W x_i``). ``log_mixture`` sums
    ``p_i f(x, i)`` in probability space over real pairs only (``head.mixture``), target rows in chunks;
    its log is exact in the ranking of the words (what accuracy needs) but float32 loses words below
    about 1e-30 (their log is imprecise or ``-inf``).
    """

    def __init__(self, head: PredictiveHead, query_pre: Tensor, memory_pre: Tensor, target_mask: Tensor,
                 source_mask: Tensor | None, chunk_rows: int):
        self.head = head
        self.query_pre = query_pre
        self.memory_pre = memory_pre
        self.target_mask = target_mask
        b, s = memory_pre.shape[0], memory_pre.shape[1]
        self.source_mask = torch.ones(b, s, dtype=torch.bool, device=memory_pre.device) if source_mask is None \
            else source_mask.to(memory_pre.device)
        self.chunk_rows = max(1, int(chunk_rows))

    def log_probs(self, weights: Tensor) -> Tensor:
        """``(..., B, T, S) -> (..., B, T, V)``."""
        return self.head.log_probs(self.query_pre + torch.matmul(weights, self.memory_pre))

    def log_probs_each(self) -> Tensor:
        """``(B, T, S, V)``: every position of every row at once (memory ``B T S V``: small problems only)."""
        return self.head.log_probs(self.query_pre.unsqueeze(2) + self.memory_pre.unsqueeze(1))

    def log_mixture(self, scores: Tensor) -> Tensor:
        """``(B, T, S) -> (B, T, V)``; ``-inf`` rows at target padding."""
        alpha = torch.log_softmax(scores, -1).exp()  # (B, T, S)
        dtype = torch.promote_types(self.query_pre.dtype, torch.float32)  # the head's output dtype
        out = alpha.new_zeros(alpha.shape[:2] + (self.head.num_classes,), dtype=dtype)  # (B, T, V)
        rows_b, rows_t = self.target_mask.nonzero(as_tuple=True)  # (N,), (N,)
        per_chunk = max(1, self.chunk_rows // alpha.shape[-1])
        for start in range(0, rows_b.shape[0], per_chunk):
            b, t = rows_b[start : start + per_chunk], rows_t[start : start + per_chunk]  # (R,)
            row, pos = self.source_mask[b].nonzero(as_tuple=True)  # the chunk's real pairs (P,)
            pb, pt = b[row], t[row]
            pre = kernels.pick(self.query_pre, pb, pt) + kernels.pick(self.memory_pre, pb, pos)  # (P, D)
            out[b, t] = self.head.mixture(pre, kernels.pick(alpha, pb, pt, pos), row, b.shape[0])  # (R, V)
        return out.log()
