"""``varattn train``: train a model of any registered task, or resume a run (``varattn vqa train`` is an alias).

The task is ``--task``, else the one the config names (a file's ``task:`` key, or the task that ships a
config of that name), else translation (the built-in synthetic task). ``--resume`` continues whatever task
the run holds. The flags are one set for every task, plus each task's own (``TaskSpec.train_flags``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from varattn.commands.common import add_task_flags, refuse_foreign_flags, task_flag_actions
from varattn.errors import VarattnError

log = logging.getLogger("varattn")

#: flags ``--resume`` may change; every other setting comes from the run's own run.json
RESUMABLE = ("max_steps", "epochs", "max_minutes", "threads", "device")
#: the settings of every task that a flag gives (besides ``RESUMABLE``): ``--resume`` refuses them
FIXED = ("mode", "out", "seed", "batch_size", "lr", "eval_every", "set")


def register(sub) -> None:
    from varattn import DEFAULT_TASK
    from varattn.training.registry import task_names

    p = sub.add_parser("train", help="train a model of any task (default: translation, the built-in synthetic task)")
    p.add_argument("--task", help=f"the task: {', '.join(task_names())} (default: the config's, else {DEFAULT_TASK})")
    add_train_arguments(p, task_names())
    p.set_defaults(func=run)


def add_train_arguments(p: argparse.ArgumentParser, tasks: list[str]) -> None:
    """The training flags (one copy, for ``varattn train`` and ``varattn vqa train``) and ``tasks``' own flags."""
    from varattn.latent import mode_names
    from varattn.training.registry import get_task

    specs = [get_task(name) for name in tasks]
    shipped = "; ".join(f"{', '.join(s.shipped_configs())} ({s.name})" for s in specs if s.shipped_configs())
    default = "" if len(specs) > 1 else f", default {specs[0].default_config}"
    p.add_argument("--config", help=f"YAML config path or shipped name: {shipped}{default}")
    p.add_argument("--mode", help="training mode: " + ", ".join(mode_names()))
    outs = ", ".join(f"runs/{s.out_pattern.format(mode='MODE')} ({s.name})" for s in specs)
    p.add_argument("--out", help=f"run directory (default {outs})")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run where it stopped")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-minutes", type=float, help="stop (and validate) after this much wall-clock time")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int, help="examples per batch (sentences, questions)")
    p.add_argument("--lr", type=float)
    p.add_argument("--eval-every", type=int, help="validate every N updates (default: every epoch)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", help="auto (default: a CUDA GPU if there is one, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set model.dropout=0.3 --set objective.num_samples=2")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-tensorboard", action="store_true")
    for spec in specs:
        if spec.train_flags is not None:
            add_task_flags(p, f"{spec.title or spec.name} (task {spec.name})", spec.train_flags)


def _task_values(args: argparse.Namespace, spec) -> dict:
    """The task's own train flags as given (``None``: not given), by config key."""
    return {a.dest: getattr(args, a.dest, None) for a in task_flag_actions(spec.train_flags)}


def _resumed(args: argparse.Namespace):
    from varattn import run_task
    from varattn.training.run_info import RUN_FILE, parse_section

    run_dir = Path(args.resume)
    if not (run_dir / RUN_FILE).is_file():
        raise VarattnError(f"nothing to resume in {run_dir} (no {RUN_FILE})")
    spec, info = run_task(run_dir, getattr(args, "task", None))
    refuse_foreign_flags(args, spec, "train", f"{run_dir} holds one")
    fixed = {**{key: getattr(args, key) for key in FIXED}, "set": args.set or None, **_task_values(args, spec)}
    given = [f"--{key.replace('_', '-')}" for key, value in fixed.items() if value is not None]
    if given:
        raise VarattnError(f"--resume continues the run as configured in {run_dir / RUN_FILE}; "
                           f"drop {', '.join(given)} (only --max-steps, --epochs, --max-minutes, --threads and "
                           "--device change)")
    cfg = parse_section(run_dir, "config", lambda: spec.config.from_dict(info["config"]))
    changes = {key: getattr(args, key) for key in RESUMABLE if getattr(args, key) is not None}
    if changes:
        cfg = spec.config.from_dict({**cfg.to_dict(), **changes})
    return spec, cfg, run_dir


def _fresh(args: argparse.Namespace):
    from varattn import DEFAULT_TASK
    from varattn.training.registry import config_task, get_task

    named = getattr(args, "task", None)
    held = config_task(args.config) if args.config else None
    if named is not None and held is not None and named != held:
        raise VarattnError(f"the config {args.config} is for the {held} task, not for {named}")
    spec = get_task(named or held or DEFAULT_TASK)
    refuse_foreign_flags(args, spec, "train", f"--task {spec.name}")
    own = _task_values(args, spec)
    overrides = {key: getattr(args, key) for key in (*RESUMABLE, "mode", "seed", "batch_size", "lr", "eval_every")}
    cfg = spec.load_config(args.config, {**overrides, **own}, args.set)
    if spec.fresh_config is not None:
        spec.fresh_config(cfg, own)
    return spec, cfg, Path(args.out) if args.out else spec.default_out(cfg)


def run(args: argparse.Namespace) -> int:
    from varattn.training.distributed import world_from_env

    spec, cfg, run_dir = _resumed(args) if args.resume else _fresh(args)
    if world_from_env().main:  # under torchrun, one voice: rank 0's
        log.info("training %s (%s) into %s", cfg.mode, spec.title or spec.name, run_dir)
    result = spec.train(cfg, run_dir, resume=bool(args.resume), progress=None if not args.no_progress else False,
                        tensorboard=not args.no_tensorboard)
    print(spec.describe(cfg, result, run_dir))
    return 0
