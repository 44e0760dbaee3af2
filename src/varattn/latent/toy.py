"""Small random alignment problems: for tests, benchmarks and for trying the objectives out."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from varattn.latent import AlignmentProblem, ContextEmission, LinearSoftmaxHead


@dataclass
class ToyProblem:
    """Learnable prior/posterior scores and an output head over random queries and memory.

    Shapes: prior_scores/posterior_scores ``(B, T, S)``, query ``(B, T, Dq)``, memory
    ``(B, S, Dc)``, gold ``(B, T)``. Padded source positions hold ``-inf`` scores.
    """

    prior_scores: torch.Tensor
    posterior_scores: torch.Tensor
    head: LinearSoftmaxHead
    query: torch.Tensor
    memory: torch.Tensor
    gold: torch.Tensor
    source_mask: torch.Tensor
    target_mask: torch.Tensor

    def problem(self, chunk_rows: int = 4096, posterior: torch.Tensor | None = None) -> AlignmentProblem:
        emission = ContextEmission(self.head, self.query, self.memory, self.gold, self.target_mask, chunk_rows)
        post = self.posterior_scores if posterior is None else posterior
        return AlignmentProblem(self.prior_scores, self.source_mask, self.target_mask, emission, post)

    def parameters(self) -> list[torch.Tensor]:
        return [self.prior_scores, self.posterior_scores, *self.head.parameters()]


def make_toy(
    seed: int = 0,
    batch: int = 2,
    tgt_len: int = 3,
    src_len: int = 4,
    vocab: int = 6,
    lengths: list[int] | None = None,
    tgt_lengths: list[int] | None = None,
    dtype: torch.dtype = torch.float64,
    scale: float = 1.0,
) -> ToyProblem:
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or [src_len] * batch
    tgt_lengths = tgt_lengths or [tgt_len] * batch
    source_mask = torch.arange(src_len)[None, :] < torch.tensor(lengths)[:, None]  # (B, S)
    target_mask = torch.arange(tgt_len)[None, :] < torch.tensor(tgt_lengths)[:, None]  # (B, T)

    def scores() -> torch.Tensor:
        s = scale * torch.randn(batch, tgt_len, src_len, generator=g, dtype=dtype)
        s = s.masked_fill(~source_mask[:, None, :], float("-inf"))
        return s.requires_grad_()

    head = LinearSoftmaxHead(5, 4, 6, vocab, dropout=0.0).to(dtype)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
    query = torch.randn(batch, tgt_len, 5, generator=g, dtype=dtype)
    memory = torch.randn(batch, src_len, 4, generator=g, dtype=dtype)
    gold = torch.randint(0, vocab, (batch, tgt_len), generator=g)
    return ToyProblem(scores(), scores(), head, query, memory, gold, source_mask, target_mask)


def flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """Gradient of ``loss`` w.r.t. ``params`` as one vector (NaN-free: -inf entries of
    masked score tensors have zero gradient)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([
        (torch.zeros_like(p) if gr is None else gr).reshape(-1) for p, gr in zip(params, grads)
    ])
