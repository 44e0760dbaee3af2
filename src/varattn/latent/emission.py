"""Emissions: the log-probability of the gold output given an alignment.

An emission answers one question for the objectives: *if the model attended with these
weights, how likely is the gold token?* Weights are one-hot samples (hard attention), soft
attention weights, or relaxed samples; ``log_prob_all`` scores every source position at
once (enumeration).

``ContextEmission`` implements this for the common family where the output layer sees
``[query ; context]`` with ``context = sum_i z_i x_i``. It relies on the output head being
split into a linear part, which is why attention weights can be pushed through it
(``W [q ; sum_i z_i x_i] = W_q q + sum_i z_i W_x x_i``), and a non-linear part evaluated per
row. Enumeration therefore never materialises ``(B, T, S, V)`` logits: rows are processed in
chunks of at most ``chunk_rows`` (each chunk is recomputed in the backward pass, so peak
memory is bounded by the chunk size in training too).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from varattn import kernels
from varattn.latent.prediction import EmissionPredictor, Predictor


def full_precision(x: Tensor) -> Tensor:
    """``x`` in float32 when autocast made it bfloat16 or float16; float32 and float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class Emission(Protocol):
    """What every objective needs from a model's output layer."""

    def log_prob(self, weights: Tensor) -> Tensor:
        """Map attention weights ``(..., B, T, S)`` to ``log f(x, z)_{y_t}`` ``(..., B, T)``."""
        ...

    def log_prob_all(self) -> Tensor:
        """``(B, T, S)``: ``log f(x, i)_{y_t}`` for every source position ``i``."""
        ...

    def predictor(self) -> Predictor:
        """The same output layer over every output word, rows ``(B, T)`` (see ``varattn.latent.prediction``):
        what accuracy and other teacher-forced predictions use."""
        ...


class OutputHead(Protocol):
    """An output layer ``g(A q + C x + b)`` scored at the gold label.

    ``query_part`` and ``context_part`` must be linear in their inputs' last dimension (a
    bias may live in either, but only once); ``log_prob_gold`` applies the rest.
    """

    def query_part(self, query: Tensor) -> Tensor:
        """``(..., Dq) -> (..., D)``."""
        ...

    def context_part(self, context: Tensor) -> Tensor:
        """``(..., Dc) -> (..., D)``; linear, no bias."""
        ...

    def log_prob_gold(self, pre: Tensor, gold: Tensor) -> Tensor:
        """``pre (N, D)``, ``gold (N,)`` int64 -> ``(N,)`` log-probability of ``gold``."""
        ...


class ContextEmission:
    """Emission for outputs that read ``[query_t ; sum_i z_i x_i]``.

    Args:
        head: the output head (see ``OutputHead``).
        query: ``(B, T, Dq)`` per-target-step query (the decoder state).
        memory: ``(B, S, Dc)`` source vectors ``x_i``.
        gold: ``(B, T)`` int64 gold labels.
        target_mask: ``(B, T)`` bool; rows at target padding are never evaluated by
            ``log_prob_all`` (their output is 0).
        chunk_rows: the most rows (query-position pairs) that go through the non-linear part
            of the head at once (in ``predictor().log_mixture`` too).
        source_mask: ``(B, S)`` bool, True at real source positions, or None (every position
            is real). ``log_prob_all`` evaluates real positions only and gives 0 at the others
            (where every alignment distribution puts no mass).
    """

    def __init__(
        self,
        head: OutputHead,
        query: Tensor,
        memory: Tensor,
        gold: Tensor,
        target_mask: Tensor,
        chunk_rows: int = 8192,
        source_mask: Tensor | None = None,
    ):
        self.head = head
        self.gold = gold
        self.target_mask = target_mask
        self.source_mask = source_mask
        self.chunk_rows = max(1, int(chunk_rows))
        self.query_pre = head.query_part(query)  # (B, T, D)
        self.memory_pre = head.context_part(memory)  # (B, S, D)

    def predictor(self) -> Predictor:
        """The teacher-forced ``EmissionPredictor`` over the same rows; the head must be a ``PredictiveHead``."""
        return EmissionPredictor(self.head, self.query_pre, self.memory_pre, self.target_mask,  # type: ignore[arg-type]
                                 self.source_mask, self.chunk_rows)

    def _score_rows(self, pre: Tensor, gold: Tensor) -> Tensor:
        """Run the head's non-linear part over ``pre (N, D)`` in chunks.

        When there is more than one chunk, each is recomputed in the backward pass instead
        of keeping its ``(chunk, V)`` activations; a single chunk runs plainly.
        """
        if pre.shape[0] <= self.chunk_rows:
            return self.head.log_prob_gold(pre, gold)
        out = []
        for start in range(0, pre.shape[0], self.chunk_rows):
            p = pre[start : start + self.chunk_rows]
            g = gold[start : start + self.chunk_rows]
            if torch.is_grad_enabled() and p.requires_grad:
                out.append(checkpoint(self.head.log_prob_gold, p, g, use_reentrant=False))
            else:
                out.append(self.head.log_prob_gold(p, g))
        return torch.cat(out) if out else pre.new_zeros(0)

    def log_prob(self, weights: Tensor) -> Tensor:
        """``(..., B, T, S) -> (..., B, T)``, evaluated at every target position."""
        context_pre = torch.matmul(weights, self.memory_pre)  # (..., B, T, D)
        pre = context_pre + self.query_pre
        lead = pre.shape[:-1]
        gold = self.gold.expand(lead)
        flat = self._score_rows(pre.reshape(-1, pre.shape[-1]), gold.reshape(-1))  # (N,)
        return flat.reshape(lead)

    def log_prob_all(self) -> Tensor:
        """``(B, T, S)`` gold log-probability for every source position; 0 at target padding.

        Positions outside ``source_mask`` (when given) are not evaluated and hold 0. Target
        rows go through the head in chunks of whole rows whose positions number at most
        ``chunk_rows`` (a row with more positions than that forms a chunk of its own).
        """
        b, t, _ = self.query_pre.shape
        s = self.memory_pre.shape[1]
        dtype = torch.promote_types(self.query_pre.dtype, torch.float32)  # float32 under autocast
        out = self.query_pre.new_zeros(b, t, s, dtype=dtype)
        rows_b, rows_t = self.target_mask.nonzero(as_tuple=True)  # (N,), (N,)
        n = rows_b.shape[0]
        if n == 0:
            return out
        if self.source_mask is None:
            source_mask = torch.ones(b, s, dtype=torch.bool, device=out.device)
        else:
            source_mask = self.source_mask.to(out.device)
        widths = source_mask.sum(1)[rows_b].tolist()  # positions per target row
        bounds, first, filled = [], 0, 0
        for i, width in enumerate(widths):
            if i > first and filled + width > self.chunk_rows:
                bounds.append((first, i))
                first, filled = i, 0
            filled += width
        bounds.append((first, n))
        index_b, index_t, index_s, pieces = [], [], [], []
        for lo, hi in bounds:
            row, pos = source_mask[rows_b[lo:hi]].nonzero(as_tuple=True)  # the chunk's real pairs
            pb, pt = rows_b[lo:hi][row], rows_t[lo:hi][row]
            pieces.append(self._enumerate_chunk(pb, pt, pos, single=len(bounds) == 1))
            index_b.append(pb)
            index_t.append(pt)
            index_s.append(pos)
        index = (torch.cat(index_b), torch.cat(index_t), torch.cat(index_s))
        return out.index_put(index, torch.cat(pieces))

    def _enumerate_chunk(self, pb: Tensor, pt: Tensor, pos: Tensor, single: bool) -> Tensor:
        """``(n,)`` gold log-probabilities of the pairs (target row ``(pb, pt)``, source position ``pos``)."""

        def run(query_pre: Tensor, memory_pre: Tensor) -> Tensor:
            pre = kernels.pick(query_pre, pb, pt) + kernels.pick(memory_pre, pb, pos)  # (n, D)
            return self.head.log_prob_gold(pre, self.gold[pb, pt])

        if not single and torch.is_grad_enabled() and (self.query_pre.requires_grad or self.memory_pre.requires_grad):
            return checkpoint(run, self.query_pre, self.memory_pre, use_reentrant=False)
        return run(self.query_pre, self.memory_pre)


class LinearSoftmaxHead(nn.Module):
    """The paper's output layer: ``softmax(W_gen · drop(tanh(W_out [q ; c] + b)))``.

    Args:
        query_dim: size of the query ``q`` (the decoder state).
        context_dim: size of a source vector ``x_i``.
        hidden_dim: size of ``tanh(W_out [q ; c] + b)``.
        num_classes: output vocabulary size ``V``.
        dropout: dropout applied after the tanh.
    """

    def __init__(self, query_dim: int, context_dim: int, hidden_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.query_proj = nn.Linear(query_dim, hidden_dim, bias=True)
        self.context_proj = nn.Linear(context_dim, hidden_dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.generator = nn.Linear(hidden_dim, num_classes)

    @property
    def num_classes(self) -> int:
        """``V``: the number of output classes."""
        return self.generator.out_features

    def query_part(self, query: Tensor) -> Tensor:
        return kernels.linear(query, self.query_proj.weight, self.query_proj.bias)

    def context_part(self, context: Tensor) -> Tensor:
        return kernels.linear(context, self.context_proj.weight, self.context_proj.bias)

    def hidden(self, pre: Tensor) -> Tensor:
        """``(..., D) -> (..., D)``: the non-linearity and dropout before the generator."""
        return self.dropout(torch.tanh(pre))

    def log_probs(self, pre: Tensor) -> Tensor:
        """``(..., D) -> (..., V)`` full output distribution (for decoding)."""
        logits = kernels.linear(self.hidden(pre), self.generator.weight, self.generator.bias)
        return torch.log_softmax(full_precision(logits), dim=-1)  # float32 under autocast too

    def mixture(self, pre: Tensor, weights: Tensor, rows: Tensor, num_rows: int,
                chunk_elements: int = 1 << 20) -> Tensor:
        """``(num_rows, V)`` probabilities ``sum_k weights_k softmax(generator(hidden(pre_k)))`` per row.

        ``pre (M, D)``, ``weights (M,)`` and ``rows (M,)`` list the pairs of a mixture of output
        distributions (e.g. one per source position, weighted by the alignment). The sum is taken
        in probability space, ``chunk_elements`` of ``(pairs, V)`` at a time (4 MB by default, so
        the intermediates stay in the CPU cache); float32 probabilities below about 1e-30 lose
        precision, which callers that need the log of tiny mixtures must handle.
        """
        dtype = torch.promote_types(pre.dtype, torch.float32)  # log_probs are float32 under autocast
        mix = pre.new_zeros(num_rows, self.generator.out_features, dtype=dtype)
        step = max(1, chunk_elements // self.generator.out_features)
        for i in range(0, pre.shape[0], step):
            probs = self.log_probs(pre[i : i + step]).exp_().mul_(weights[i : i + step].unsqueeze(1))
            mix.index_add_(0, rows[i : i + step], probs)
        return mix

    def log_prob_gold(self, pre: Tensor, gold: Tensor) -> Tensor:
        """``pre (N, D)``, ``gold (N,)`` -> ``(N,)`` ``log softmax(generator(hidden(pre)))[gold]``."""
        return kernels.gold_log_softmax(self.hidden(pre), self.generator.weight, self.generator.bias, gold)
