"""``varattn evaluate``: the figures of a trained run of any registered task (``varattn vqa evaluate`` is an alias).

The run's ``run.json`` names its task; the task evaluates it (``TaskSpec.evaluate``) and adds its own flags:
translation reports exact, ELBO and K-max perplexity and token accuracy on the run's validation data or
``--src/--tgt`` (pairs it cannot score, such as an empty source, are left out and counted in ``skipped``);
VQA reports accuracy by answer type, exact NLL, -ELBO and entropies on easy-VQA's test split or VQA 2.0 files.
"""

from __future__ import annotations

import argparse
import json

from varattn.commands.common import add_run_arguments, add_task_flags, check_batch_size, refuse_foreign_flags


def register(sub) -> None:
    from varattn.training.registry import task_names

    p = sub.add_parser("evaluate", help="the figures of a trained run: perplexities, accuracy, ELBO, entropies")
    add_evaluate_arguments(p, task_names())
    p.set_defaults(func=run, task=None)


def add_evaluate_arguments(p: argparse.ArgumentParser, tasks: list[str]) -> None:
    """The evaluation flags (one copy, for ``varattn evaluate`` and ``varattn vqa evaluate``), and ``tasks``' own."""
    from varattn.training.registry import get_task

    add_run_arguments(p)
    p.add_argument("--batch-size", type=int, help="examples per batch (default: the task's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    for spec in map(get_task, tasks):
        if spec.evaluate_flags is not None:
            add_task_flags(p, f"{spec.title or spec.name} runs", spec.evaluate_flags)


def run(args: argparse.Namespace) -> int:
    from varattn import run_task

    if args.batch_size is not None:
        check_batch_size(args.batch_size)
    spec, _ = run_task(args.run_dir, args.task)
    refuse_foreign_flags(args, spec, "evaluate", f"{args.run_dir} holds one")
    trained = spec.load(args.run_dir, args.checkpoint, args.device)
    result, lines = spec.evaluate(trained, args)
    print(json.dumps(result) if args.json else "\n".join(lines))
    return 0
