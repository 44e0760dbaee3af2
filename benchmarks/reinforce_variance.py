"""Variance of the REINFORCE gradient with and without the soft-attention baseline.

For ``var-sample`` the gradient that REINFORCE estimates is the inference network's (here:
the gradient with respect to q's scores); for ``hard-sample`` it is the prior's. On a fixed
random problem whose output layer has a realistic vocabulary (so that ``log f`` is around
``-log V``, as in translation), the script draws many independent one-sample gradient
estimates with the baseline ``B = log f(x, E_p[z])`` and with ``B = 0``, and prints the
total variance (the trace of the covariance) of each and their ratio.

    python benchmarks/reinforce_variance.py [--draws 1000] [--vocab 8000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch

from varattn.latent import make_objective
from varattn.latent.toy import make_toy


def gradient_draws(toy, mode: str, baseline: bool, target: torch.Tensor, draws: int) -> torch.Tensor:
    """``(draws, numel)`` independent one-sample gradient estimates w.r.t. ``target``."""
    objective = make_objective(mode, baseline=baseline)
    out = []
    for _ in range(draws):
        surrogate = objective.loss(toy.problem()).surrogate
        (grad,) = torch.autograd.grad(surrogate, target)
        out.append(torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0).reshape(-1))
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--src-len", type=int, default=12)
    parser.add_argument("--tgt-len", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    toy = make_toy(args.seed, batch=args.batch, tgt_len=args.tgt_len, src_len=args.src_len, vocab=args.vocab,
                   dtype=torch.float32, scale=2.0)
    with torch.no_grad():  # output weights of a trained-like size: log f around -log V
        for p in toy.head.parameters():
            p.mul_(0.3)
    print(f"problem: batch {args.batch}, target length {args.tgt_len}, source length {args.src_len}, "
          f"vocabulary {args.vocab}, {args.draws} one-sample draws per estimator, seed {args.seed}")
    print()
    print("| mode | gradient of | variance, no baseline | variance, soft baseline | ratio |")
    print("|---|---|---|---|---|")
    notes = []
    for mode, target, what in [
        ("var-sample", toy.posterior_scores, "q (inference network)"),
        ("hard-sample", toy.prior_scores, "p (prior attention)"),
    ]:
        start = time.perf_counter()
        plain = gradient_draws(toy, mode, False, target, args.draws)
        based = gradient_draws(toy, mode, True, target, args.draws)
        v_plain = float(plain.var(0).sum())
        v_based = float(based.var(0).sum())
        mean_gap = float((plain.mean(0) - based.mean(0)).norm() / based.mean(0).norm())
        print(f"| {mode} | {what} | {v_plain:.4g} | {v_based:.4g} | {v_plain / v_based:.0f}x |")
        notes.append(f"{mode}: the two estimators' means differ by {mean_gap:.3f} (relative L2; both are "
                     f"unbiased, the gap is the no-baseline estimator's noise); {time.perf_counter() - start:.0f} s")
    print()
    print("\n".join(notes))


if __name__ == "__main__":
    main()
