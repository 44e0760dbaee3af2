"""``varattn train``: train a model (default: the built-in synthetic task), or resume a run."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from varattn.errors import VarattnError

log = logging.getLogger("varattn")

#: flags ``--resume`` may change; every other setting comes from the run's own run.json
RESUMABLE = ("max_steps", "epochs", "max_minutes", "threads", "device")


def register(sub) -> None:
    from varattn.latent import mode_names

    p = sub.add_parser("train", help="train a model (default: the built-in synthetic task)")
    p.add_argument("--config", default="toy", help="YAML config path or shipped name: toy, small, iwslt14")
    p.add_argument("--mode", help="training mode: " + ", ".join(mode_names()))
    p.add_argument("--train", help="training corpus prefix (PREFIX.SRC_LANG, PREFIX.TGT_LANG)")
    p.add_argument("--valid", help="validation corpus prefix")
    p.add_argument("--src-lang")
    p.add_argument("--tgt-lang")
    p.add_argument("--out", help="run directory (default runs/MODE)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run where it stopped")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-minutes", type=float, help="stop (and validate) after this much wall-clock time")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int, help="sentences per batch")
    p.add_argument("--batch-tokens", type=int, help="batch by padded target tokens instead of sentences")
    p.add_argument("--lr", type=float)
    p.add_argument("--eval-every", type=int, help="validate every N updates (default: every epoch)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", help="auto (default: a CUDA GPU if there is one, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set model.embed_dim=256 --set objective.num_samples=2")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-tensorboard", action="store_true")
    p.set_defaults(func=run)


def _resumed_config(args: argparse.Namespace):
    from varattn.nmt.config import TrainConfig
    from varattn.training.run_info import RUN_FILE, parse_section, read_run_info

    run_dir = Path(args.resume)
    if not (run_dir / RUN_FILE).is_file():
        raise VarattnError(f"nothing to resume in {run_dir} (no {RUN_FILE})")
    fixed = {"--mode": args.mode, "--train": args.train, "--valid": args.valid, "--out": args.out,
             "--seed": args.seed, "--batch-size": args.batch_size, "--batch-tokens": args.batch_tokens,
             "--lr": args.lr, "--eval-every": args.eval_every, "--set": args.set or None}
    given = [flag for flag, value in fixed.items() if value is not None]
    if given:
        raise VarattnError(f"--resume continues the run as configured in {run_dir / RUN_FILE}; "
                           f"drop {', '.join(given)} (only --max-steps, --epochs, --max-minutes, --threads and "
                           "--device change)")
    info = read_run_info(run_dir, "nmt")
    cfg = parse_section(run_dir, "config", lambda: TrainConfig.from_dict(info["config"]))
    for key in RESUMABLE:
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    return cfg, run_dir


def _new_config(args: argparse.Namespace):
    from varattn.nmt.config import load_config

    overrides = {
        "mode": args.mode, "train": args.train, "valid": args.valid, "src_lang": args.src_lang,
        "tgt_lang": args.tgt_lang, "max_steps": args.max_steps, "epochs": args.epochs, "seed": args.seed,
        "batch_size": args.batch_size, "batch_tokens": args.batch_tokens, "lr": args.lr,
        "eval_every": args.eval_every, "threads": args.threads, "max_minutes": args.max_minutes,
        "device": args.device,
    }
    cfg = load_config(args.config, overrides, args.set)
    if args.src_lang is None and args.tgt_lang is None:
        _use_toy_data_suffixes(cfg)
    return cfg, Path(args.out or f"runs/{cfg.mode}")


def _use_toy_data_suffixes(cfg) -> None:
    """Corpora written by ``varattn toy-data`` end in ``.src``/``.tgt``: read those when the languages were not
    named and the config's ``PREFIX.SRC_LANG`` files do not exist."""
    prefixes = [p for p in (cfg.train, cfg.valid) if p is not None]
    if not prefixes or any(Path(f"{p}.{cfg.src_lang}").exists() for p in prefixes):
        return
    if all(Path(f"{p}.src").is_file() and Path(f"{p}.tgt").is_file() for p in prefixes):
        log.info("reading %s (the .src/.tgt files of varattn toy-data; --src-lang/--tgt-lang choose others)",
                 ", ".join(f"{p}.src/.tgt" for p in prefixes))
        cfg.src_lang, cfg.tgt_lang = "src", "tgt"


def run(args: argparse.Namespace) -> int:
    from varattn.nmt.train import train
    from varattn.training.distributed import world_from_env

    cfg, run_dir = _resumed_config(args) if args.resume else _new_config(args)
    if world_from_env().main:  # under torchrun, one voice: rank 0's
        log.info("training %s into %s", cfg.mode, run_dir)
    result = train(cfg, run_dir, resume=bool(args.resume), progress=None if not args.no_progress else False,
                   tensorboard=not args.no_tensorboard)
    elbo = f" | ELBO perplexity {result['elbo_ppl']:.3f}" if result.get("elbo_ppl") is not None else ""
    from varattn.nmt.evaluate import perplexity_name

    print(f"{cfg.mode}: step {result['step']} | {perplexity_name(result)} {result['ppl']:.3f}{elbo} | "
          f"token accuracy {result['accuracy']:.3f} | {result['tokens']} validation tokens | run: {run_dir}")
    return 0
