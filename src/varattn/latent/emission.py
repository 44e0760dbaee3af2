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


class Emission(Protocol):
    """What every objective needs from a model's output layer."""

    def log_prob(self, weights: Tensor) -> Tensor:
        """Map attention weights ``(..., B, T, S)`` to ``log f(x, z)_{y_t}`` ``(..., B, T)``."""
        ...

    def log_prob_all(self) -> Tensor:
        """``(B, T, S)``: ``log f(x, i)_{y_t}`` for every source position ``i``."""
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
            of the head at once.
    """

    def __init__(
        self,
        head: OutputHead,
        query: Tensor,
        memory: Tensor,
        gold: Tensor,
        target_mask: Tensor,
        chunk_rows: int = 8192,
    ):
        self.head = head
        self.gold = gold
        self.target_mask = target_mask
        self.chunk_rows = max(1, int(chunk_rows))
        self.query_pre = head.query_part(query)  # (B, T, D)
        self.memory_pre = head.context_part(memory)  # (B, S, D)

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
        """``(B, T, S)`` gold log-probability for every source position; 0 at target padding."""
        b, t, d = self.query_pre.shape
        s = self.memory_pre.shape[1]
        rows_b, rows_t = self.target_mask.nonzero(as_tuple=True)  # (N,), (N,)
        n = rows_b.shape[0]
        out = self.query_pre.new_zeros(b, t, s)
        if n == 0:
            return out
        per_chunk = max(1, self.chunk_rows // s)  # target rows per chunk
        pieces = []
        for start in range(0, n, per_chunk):
            rb = rows_b[start : start + per_chunk]
            rt = rows_t[start : start + per_chunk]
            pieces.append(self._enumerate_chunk(rb, rt))
        scores = torch.cat(pieces)  # (N, S)
        return out.index_put((rows_b, rows_t), scores)

    def _enumerate_chunk(self, rb: Tensor, rt: Tensor) -> Tensor:
        """``(n, S)`` scores of every source position for target rows ``(rb, rt)``."""
        s = self.memory_pre.shape[1]

        def run(query_pre: Tensor, memory_pre: Tensor) -> Tensor:
            pre = query_pre[rb, rt].unsqueeze(1) + memory_pre[rb]  # (n, S, D)
            gold = self.gold[rb, rt].unsqueeze(1).expand(-1, s)  # (n, S)
            lp = self.head.log_prob_gold(pre.reshape(-1, pre.shape[-1]), gold.reshape(-1))
            return lp.reshape(-1, s)

        single = rb.shape[0] == int(self.target_mask.sum())  # everything fits in one chunk
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

    def query_part(self, query: Tensor) -> Tensor:
        return self.query_proj(query)

    def context_part(self, context: Tensor) -> Tensor:
        return self.context_proj(context)

    def hidden(self, pre: Tensor) -> Tensor:
        """``(..., D) -> (..., D)``: the non-linearity and dropout before the generator."""
        return self.dropout(torch.tanh(pre))

    def log_probs(self, pre: Tensor) -> Tensor:
        """``(..., D) -> (..., V)`` full output distribution (for decoding)."""
        return torch.log_softmax(self.generator(self.hidden(pre)), dim=-1)

    def log_prob_gold(self, pre: Tensor, gold: Tensor) -> Tensor:
        logits = self.generator(self.hidden(pre))  # (N, V)
        gold_logit = logits.gather(-1, gold.unsqueeze(-1)).squeeze(-1)
        return gold_logit - torch.logsumexp(logits, dim=-1)
