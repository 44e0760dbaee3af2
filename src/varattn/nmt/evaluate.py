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
from varattn.nmt.model import LatentAlignmentNMT


def predicted_tokens(problem: AlignmentProblem, head, objective: Objective) -> torch.Tensor:
    """``(B, T)`` most probable next word at each teacher-forced step (0 at target padding).

    Uses ``objective``'s predictive rule (see ``LatentAlignmentNMT.next_token_log_probs``).
    The marginal rule's argmax is that of the mixture ``sum_i p_i f(x, i)``, taken in
    probability space (``LinearSoftmaxHead.mixture``, as beam search does, instead of a
    log-sum-exp over ``S``: the same argmax, several times faster), for real (target row,
    source position) pairs only, target rows in chunks of at most the emission's
    ``chunk_rows`` pairs.
    """
    emission = problem.emission
    log_alpha = problem.prior().log_probs  # (B, T, S)
    if objective.predicts_mixture:
        alpha = log_alpha.exp()
        out = torch.zeros(alpha.shape[:2], dtype=torch.long, device=alpha.device)
        rows_b, rows_t = problem.target_mask.nonzero(as_tuple=True)  # (N,), (N,)
        per_chunk = max(1, emission.chunk_rows // alpha.shape[-1])
        for start in range(0, rows_b.shape[0], per_chunk):
            b, t = rows_b[start : start + per_chunk], rows_t[start : start + per_chunk]  # (R,)
            row, pos = problem.source_mask[b].nonzero(as_tuple=True)  # the chunk's real pairs (P,)
            pb, pt = b[row], t[row]
            pre = emission.query_pre[pb, pt] + emission.memory_pre[pb, pos]  # (P, D)
            out[b, t] = head.mixture(pre, alpha[pb, pt, pos], row, b.shape[0]).argmax(-1)  # (R, V) -> (R,)
        return out
    pre = emission.query_pre + torch.matmul(log_alpha.exp(), emission.memory_pre)  # (B, T, D)
    return head.log_probs(pre).argmax(-1)


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


@torch.no_grad()
def evaluate(
    model: LatentAlignmentNMT,
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
    model: LatentAlignmentNMT,
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
            guess = predicted_tokens(problem, model.head, objective)
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
def sentence_scores(model: LatentAlignmentNMT, objective: Objective, batch: Batch) -> list[dict]:
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
