"""The VQA task in the task registry (``varattn.training.registry``): ``VQA``.

What ``varattn train`` / ``varattn evaluate`` / ``varattn.load`` need of VQA beyond the training task
itself: how a trained run opens (``varattn.vqa.run.open_trained``) and how ``varattn evaluate`` scores
one (easy-VQA's test or validation split, or VQA 2.0 files) and reports it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from varattn.errors import VarattnError
from varattn.training.registry import EvaluationReport, TaskSpec, register_task
from varattn.vqa.config import CONFIG_DIR, VQAConfig
from varattn.vqa.model import VQAModelConfig
from varattn.vqa.run import TrainedVQA, open_trained
from varattn.vqa.task import VQATask

#: ``varattn evaluate``'s questions per batch without ``--batch-size``
EVALUATE_BATCH_SIZE = 256


def evaluate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="test", choices=["test", "valid"],
                   help="easy-VQA: its test split (default) or the run's held-out validation images")
    p.add_argument("--questions", help="VQA 2.0 questions JSON (default: the run's validation files)")
    p.add_argument("--annotations", help="VQA 2.0 annotations JSON")
    p.add_argument("--features", help="region feature file of those questions' images")
    p.add_argument("--limit", type=int, help="only the first N questions")


def evaluate_run(trained: TrainedVQA, args: argparse.Namespace) -> EvaluationReport:
    """VQA accuracy (overall and by answer type), exact NLL, -ELBO and entropies of a VQA run."""
    if args.limit is not None and args.limit < 1:
        raise VarattnError("--limit must be at least 1")
    if bool(args.questions) != bool(args.annotations):
        raise VarattnError("give --questions and --annotations together")
    size = EVALUATE_BATCH_SIZE if args.batch_size is None else args.batch_size
    result = trained.evaluate(args.split, args.questions, args.annotations, args.features, size, args.limit)
    lines = [f"mode {trained.mode} | {result['questions']} questions ({result['scored_questions']} with an answer in "
             "the vocabulary)", f"VQA accuracy          {result['accuracy']:.4f}"]
    lines += [f"  {kind:<19} {value:.4f}" for kind, value in result["accuracy_by_type"].items()]
    lines.append(f"exact NLL             {result['nll']:.4f}")
    for key, name in (("elbo_nll", "-ELBO                "), ("prior_entropy", "prior entropy        "),
                      ("posterior_entropy", "posterior entropy    "),
                      ("exact_posterior_entropy", "exact posterior ent. ")):
        if result[key] is not None:
            lines.append(f"{name} {result[key]:.4f}")
    return result, lines


def summary(cfg: VQAConfig, result: dict, run_dir: Path) -> str:
    elbo = f" | -ELBO {result['elbo_nll']:.4f}" if result.get("elbo_nll") is not None else ""
    return (f"{cfg.mode}: step {result['step']} | valid accuracy {result['accuracy']:.4f} | NLL {result['nll']:.4f}"
            f"{elbo} | {result['questions']} validation questions | run: {run_dir}")


VQA = register_task(TaskSpec(
    name="vqa", title="visual question answering", config=VQAConfig, task=VQATask, open_run=open_trained,
    model_config=VQAModelConfig.from_dict, evaluate=evaluate_run, evaluate_flags=evaluate_flags,
    config_dir=CONFIG_DIR, default_config="easy", run_name="vqa-{mode}", summary=summary,
    commands="varattn evaluate, vqa answer or vqa plot (continue it with varattn train --resume)",
))

__all__ = ["VQA"]
