"""Evaluation: VQA accuracy, exact NLL, ELBO and entropies over regions.

Per question, with the annotators' in-vocabulary answers ``a`` and their shares ``w_a`` (annotator
counts normalised over the in-vocabulary answers; one answer with ``w = 1`` for easy-VQA):

- ``accuracy``: the mean VQA score ``min(#annotators who gave the prediction / 3, 1)`` of the most
  probable answer under the mode's predictive rule (exact marginal over regions for latent models,
  soft attention for ``soft``); plain accuracy where there is one annotator. Questions without an
  in-vocabulary answer count, with score 0.
- ``nll``: ``-sum_a w_a log p(a | x)`` with the exact ``log p(a | x) = log sum_i p(z=i) f(x, i)_a``
  (the objective's ``score``; the soft likelihood for ``soft``): the expected NLL of the training
  answer distribution. ``elbo_nll``: the same with the enumerated ELBO, where there is a q.
- ``prior_entropy``: mean entropy (nats) of ``p(z | x)`` over the real regions; ``posterior_entropy``:
  of the inference network ``q(z | x, a)``, weighted by ``w_a``; ``exact_posterior_entropy``: of
  ``p(z | x, a) ∝ p(z | x) f(x, z)_a`` for the latent (non-soft) models.

``accuracy_by_type`` gives the accuracy per answer type (VQA 2.0's ``yes/no``, ``number``, ``other``;
easy-VQA's ``yes/no``, ``shape``, ``color``). NLL and entropies average over the questions with an
in-vocabulary answer (``scored``).
Sums are kept per batch so that data-parallel ranks can add them up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

from varattn.latent import MaskedCategorical, Objective
from varattn.vqa.data import Batch
from varattn.vqa.model import VQAModel

SUM_KEYS = ("questions", "scored", "correct", "nll", "elbo_nll", "prior_entropy", "posterior_entropy",
            "posterior_scored", "exact_posterior_entropy")


def batch_sums(model: VQAModel, objective: Objective, batch: Batch) -> dict[str, float]:
    """Summable figures of one batch (call under ``torch.no_grad`` with the model in eval mode)."""
    enc = model.encode(batch.words, batch.lengths, batch.regions)
    problem = model.problem(enc, batch.answers, batch.answer_mask, objective.uses_posterior)
    scores = objective.score(problem)
    w = batch.weights  # (B, T), 0 at padding and for unanswerable questions
    answerable = batch.answer_mask.any(1)  # (B,)
    prior = model.prior(enc)  # batch (B, 1)
    out = dict.fromkeys(SUM_KEYS, 0.0)
    out["questions"] = float(len(batch.index))
    out["scored"] = float(answerable.sum())
    out["nll"] = float(-(scores.log_likelihood * w).sum())
    if "elbo" in scores.figures:
        out["elbo_nll"] = float(-(scores.figures["elbo"] * w).sum())
    if "posterior_entropy" in scores.figures:  # the categorical q (the relaxed objective reports none)
        out["posterior_entropy"] = float((scores.figures["posterior_entropy"] * w).sum())
        out["posterior_scored"] = out["scored"]
    out["prior_entropy"] = float(prior.entropy().squeeze(1)[answerable].sum())
    predicted = model.answer_log_probs(enc, objective).argmax(-1)  # (B,)
    earned = (batch.scores * (batch.answers == predicted.unsqueeze(1))).sum(1)  # (B,)
    out["correct"] = float(earned.sum())
    for kind, score in zip(batch.types, earned.tolist()):  # per answer type: "correct/yes/no", "count/yes/no"
        out[f"correct/{kind}"] = out.get(f"correct/{kind}", 0.0) + score
        out[f"count/{kind}"] = out.get(f"count/{kind}", 0.0) + 1.0
    if objective.predicts_mixture:
        emit = model.region_log_probs(enc).transpose(1, 2)  # (B, A, R)
        emit = emit.gather(1, batch.answers.unsqueeze(-1).expand(-1, -1, emit.shape[-1]))  # (B, T, R)
        exact = MaskedCategorical(prior.log_probs + emit, enc.region_mask.unsqueeze(1))
        out["exact_posterior_entropy"] = float((exact.entropy() * w).sum())
    return out


def add_sums(total: dict[str, float], part: dict[str, float]) -> dict[str, float]:
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + value
    return total


def evaluation_rng(device: torch.device):
    """A context with torch's generators forked and seeded: sampling evaluations (``var-relaxed``) repeat."""
    devices = [device] if device.type == "cuda" else []
    stack = contextlib.ExitStack()
    stack.enter_context(torch.random.fork_rng(devices=devices))
    torch.manual_seed(0)
    return stack


def summed(model: VQAModel, objective: Objective, batches: Iterable[Batch], device: torch.device) -> dict:
    """Sum ``batch_sums`` over ``batches`` (moved to ``device``), with the evaluation RNG."""
    total = dict.fromkeys(SUM_KEYS, 0.0)
    with evaluation_rng(device), torch.no_grad():
        for batch in batches:
            add_sums(total, batch_sums(model, objective, batch.to(device)))
    return total


def figures(sums: dict[str, float], objective: Objective) -> dict:
    """Means from summed figures: ``accuracy``, ``nll``, ``elbo_nll``, entropies, ``questions``."""
    n, scored = max(sums["questions"], 1.0), max(sums["scored"], 1.0)
    return {
        "accuracy": sums["correct"] / n,
        "nll": sums["nll"] / scored,
        "elbo_nll": sums["elbo_nll"] / scored if objective.uses_posterior else None,
        "prior_entropy": sums["prior_entropy"] / scored,
        "posterior_entropy": sums["posterior_entropy"] / scored if sums.get("posterior_scored") else None,
        "exact_posterior_entropy": (sums["exact_posterior_entropy"] / scored
                                    if objective.predicts_mixture else None),
        "accuracy_by_type": {key[len("count/"):]: sums[f"correct/{key[len('count/'):]}"] / sums[key]
                             for key in sorted(sums) if key.startswith("count/") and sums[key]},
        "questions": int(sums["questions"]),
        "scored_questions": int(sums["scored"]),
    }
