"""What every translation model does once its networks have run: wrap their outputs as the
``AlignmentProblem`` an objective reads, the relaxed model's prior precision, and ``loss``/``score``.

The LSTM (``nmt/model.py``) and the Transformer (``nmt/transformer.py``) differ in how they compute queries,
prior scores and inference scores; from there on they are the same, and this mixin is that part once.
"""

from __future__ import annotations

from torch import Tensor

from varattn.latent import AlignmentProblem, ContextEmission, LossTerms, Objective, Scores
from varattn.latent.emission import full_precision
from varattn.nmt.batching import Batch

NEG_INF = float("-inf")


def _full(x: Tensor | None) -> Tensor | None:
    return None if x is None else full_precision(x)


class LatentOutput:
    """Mixin for an ``nn.Module`` with ``head`` (the output layer), ``precision`` (the prior's precision head
    or None), ``cfg.enum_chunk_rows`` and ``problem(batch, with_posterior, topk)``."""

    def alignment_problem(self, batch: Batch, queries: Tensor, prior_scores: Tensor, memory: Tensor,
                          source_mask: Tensor, posterior_scores: Tensor | None = None,
                          posterior_precision: Tensor | None = None) -> AlignmentProblem:
        """The objective's view of one batch: queries ``(B, T, Dq)``, prior scores ``(B, T, S)``, the source
        vectors the output layer reads ``memory (B, S, Dm)``, ``source_mask (B, S)``, and q's raw scores
        ``(B, T, S)`` and precision scores ``(B, T)`` when the model ran its inference network (q's scores are
        masked here)."""
        if posterior_scores is not None:
            posterior_scores = full_precision(posterior_scores).masked_fill(~source_mask[:, None, :], NEG_INF)
        emission = ContextEmission(self.head, queries, memory, batch.tgt_out, batch.tgt_mask,
                                   self.cfg.enum_chunk_rows, source_mask)
        return AlignmentProblem(prior_scores, source_mask, batch.tgt_mask, emission, posterior_scores,
                                self.prior_precision(queries), _full(posterior_precision))

    def prior_precision(self, query: Tensor) -> Tensor | None:
        """``(...)`` the prior Dirichlet's precision scores for queries ``(..., Dq)``; None without the head."""
        return None if self.precision is None else _full(self.precision(query).squeeze(-1))

    def loss(self, batch: Batch, objective: Objective) -> LossTerms:
        return objective.loss(self.problem(batch, objective.uses_posterior))

    def score(self, batch: Batch, objective: Objective, topk: int | None = None) -> Scores:
        return objective.score(self.problem(batch, objective.uses_posterior and topk is None, topk))
