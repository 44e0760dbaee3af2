"""Exact evaluation: perplexities, the ELBO, K-max, alignment entropies, token accuracy.

The paper's perplexity is ``exp(-sum log p(y_t | x, y_<t) / N)`` over every non-pad target
token including ``</s>``, where ``p(y_t | ...)`` marginalises the alignment exactly
(categorical models), is the soft-attention likelihood (``soft``), or is importance
sampled (``var-relaxed``). The ELBO perplexity ``exp(-ELBO / N)`` is an upper bound for
models with an inference network.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from varattn.latent import AlignmentProblem, Objective
from varattn.nmt.batching import Batch
from varattn.nmt.builder import TranslationModel


def predicted_tokens(problem: AlignmentProblem, objective: Objective) -> torch.Tensor:
    """``(B, T)`` most probable next word at each teacher-forced step under ``objective``'s predictive rule.

    ``objective.predict_log_probs`` on the emission's predictor (``ContextEmission.predictor``: the
    marginal rule's mixture summed in probability space over real pairs, target rows in chunks of at
    most the emission's ``chunk_rows`` pairs; its argmax is that of ``log sum_i p_i f(x, i)``). Target
    padding gets word 0 under the marginal rule.
    """
    scores = problem.prior_scores.masked_fill(~problem.mask3, float("-inf"))  # (B, T, S)
    return objective.predict_log_probs(problem.emission.predictor(), scores).argmax(-1)


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


@torch.no_grad()
def evaluate(
    model: TranslationModel,
    objective: Objective,
    batches: Iterable[Batch],
    topk: int | None = None,
    accuracy: bool = True,
) -> dict:
    """Corpus-level figures; per-token means are over non-pad target tokens (EOS included).

    Returns a dict with ``ppl``, ``elbo_ppl`` (None without an inference network),
    ``kmax_ppl`` (with ``topk``), ``prior_entropy``, ``posterior_entropy`` (or None),
    ``accuracy`` (teacher-forced next-word accuracy), ``tokens`` and ``sentences``.
    """
    return evaluation_figures(evaluation_sums(model, objective, batches, topk, accuracy), objective, topk)


@torch.no_grad()
def evaluation_sums(
    model: TranslationModel,
    objective: Objective,
    batches: Iterable[Batch],
    topk: int | None = None,
    accuracy: bool = True,
) -> dict[str, float]:
    """The summable figures behind :func:`evaluate`: sums over ``batches`` of the log-likelihood, the
    objective's figures (``elbo``, ``prior_entropy``, ...), ``kmax`` (with ``topk``), ``correct`` (with
    ``accuracy``), ``tokens`` and ``sentences``. Sums of several shares add up to the sums of the whole.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    tokens = sentences = correct = 0
    device = next(model.parameters()).device
    for batch in batches:
        batch = batch.to(device)
        problem = model.problem(batch, objective.uses_posterior)
        scores = objective.score(problem)
        mask = batch.tgt_mask
        sums["log_likelihood"] = sums.get("log_likelihood", 0.0) + float(scores.log_likelihood.sum())
        for key, value in scores.figures.items():
            sums[key] = sums.get(key, 0.0) + float(value.sum())
        if topk is not None:
            kmax = objective.score(model.problem(batch, False, topk))
            sums["kmax"] = sums.get("kmax", 0.0) + float(kmax.log_likelihood.sum())
        if accuracy:
            guess = predicted_tokens(problem, objective)
            correct += int(((guess == batch.tgt_out) & mask).sum())
        tokens += int(mask.sum())
        sentences += len(batch)
    model.train(was_training)
    sums.update(tokens=tokens, sentences=sentences)
    if accuracy:
        sums["correct"] = correct
    return sums


def perplexity_name(figures: dict) -> str:
    """What the ``ppl`` of ``figures`` is, in one wording everywhere: ``exact perplexity``, or for the relaxed
    model ``importance-sampled perplexity (N samples)``."""
    samples = figures.get("importance_samples")
    return f"importance-sampled perplexity ({samples} samples)" if samples else "exact perplexity"


def evaluation_figures(sums: dict[str, float], objective: Objective, topk: int | None = None) -> dict:
    """The figures of :func:`evaluate` from (possibly added-up) :func:`evaluation_sums`."""
    tokens, sentences = int(sums["tokens"]), int(sums["sentences"])
    n = max(tokens, 1)
    result = {
        "ppl": _safe_exp(-sums.get("log_likelihood", 0.0) / n),
        "elbo_ppl": _safe_exp(-sums["elbo"] / n) if "elbo" in sums else None,
        "prior_entropy": sums.get("prior_entropy", 0.0) / n,
        "posterior_entropy": sums["posterior_entropy"] / n if "posterior_entropy" in sums else None,
        "tokens": tokens,
        "sentences": sentences,
    }
    if topk is not None:
        result["topk"] = topk
        result["kmax_ppl"] = _safe_exp(-sums["kmax"] / n)
    if "correct" in sums:
        result["accuracy"] = int(sums["correct"]) / n
    for key in ("kl", "prior_precision", "posterior_precision"):  # where the objective reports them
        if key in sums:
            result[key] = sums[key] / n
    if objective.importance_samples is not None:
        result["importance_samples"] = objective.importance_samples
    return result


@torch.no_grad()
def sentence_scores(model: TranslationModel, objective: Objective, batch: Batch) -> list[dict]:
    """Per-sentence exact ``log p(y | x)``, the ELBO where defined, and token counts."""
    model.eval()
    scores = objective.score(model.problem(batch, objective.uses_posterior))
    ll = scores.log_likelihood.sum(1)
    elbo = scores.figures["elbo"].sum(1) if "elbo" in scores.figures else None
    counts = batch.tgt_mask.sum(1)
    return [
        {"log_prob": float(ll[i]), "elbo": None if elbo is None else float(elbo[i]), "tokens": int(counts[i])}
        for i in range(len(batch))
    ]
