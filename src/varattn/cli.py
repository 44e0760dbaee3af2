"""The ``varattn`` command: one entry point, one subcommand per job.

Errors a user can cause print one line ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from varattn.commands.common import add_run_arguments, open_run
from varattn.errors import VarattnError

log = logging.getLogger("varattn")

#: modules that add subcommands: each has ``register(subparsers)``
COMMAND_MODULES = [
    "varattn.commands.translate",
    "varattn.commands.align",
]


def _add_corpus_flags(p: argparse.ArgumentParser, with_prefix: bool = True) -> None:
    if with_prefix:
        p.add_argument("--prefix", help="fairseq-style prefix: reads PREFIX.SRC_LANG and PREFIX.TGT_LANG")
    p.add_argument("--src", help="source file")
    p.add_argument("--tgt", help="target file")
    p.add_argument("--src-lang", default=None, help="source language suffix (default: the run's)")
    p.add_argument("--tgt-lang", default=None, help="target language suffix (default: the run's)")


def cmd_train(args: argparse.Namespace) -> int:
    from varattn.checkpoint import load_json
    from varattn.nmt.config import TrainConfig, load_config
    from varattn.nmt.run import RUN_FILE
    from varattn.nmt.train import train

    if args.resume:
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
        cfg = TrainConfig.from_dict(load_json(run_dir / RUN_FILE)["config"])
        for key in ("max_steps", "epochs", "max_minutes", "threads", "device"):
            if getattr(args, key) is not None:
                setattr(cfg, key, getattr(args, key))
    else:
        overrides = {
            "mode": args.mode, "train": args.train, "valid": args.valid, "src_lang": args.src_lang,
            "tgt_lang": args.tgt_lang, "max_steps": args.max_steps, "epochs": args.epochs, "seed": args.seed,
            "batch_size": args.batch_size, "batch_tokens": args.batch_tokens, "lr": args.lr,
            "eval_every": args.eval_every,
            "threads": args.threads, "max_minutes": args.max_minutes, "device": args.device,
        }
        cfg = load_config(args.config, overrides, args.set)
        run_dir = Path(args.out or f"runs/{cfg.mode}")
    log.info("training %s into %s", cfg.mode, run_dir)
    result = train(cfg, run_dir, resume=bool(args.resume), progress=None if not args.no_progress else False,
                   tensorboard=not args.no_tensorboard)
    elbo = f" | ELBO perplexity {result['elbo_ppl']:.3f}" if result.get("elbo_ppl") is not None else ""
    print(f"{cfg.mode}: step {result['step']} | exact perplexity {result['ppl']:.3f}{elbo} | "
          f"token accuracy {result['accuracy']:.3f} | {result['tokens']} validation tokens | run: {run_dir}")
    return 0


def _resolve_eval_pairs(args, trained):
    """Source/target lines from flags, or the run's own validation data."""
    from varattn.data.corpus import read_lines, resolve_pair
    from varattn.nmt.data import synthetic_pairs

    cfg = trained.config
    if args.src or args.tgt or args.prefix:
        src_path, tgt_path = resolve_pair(args.prefix, args.src_lang or cfg.src_lang, args.tgt_lang or cfg.tgt_lang,
                                          args.src, args.tgt)
        src, tgt = read_lines(src_path), read_lines(tgt_path)
        if len(src) != len(tgt):
            raise VarattnError(f"parallel files differ in length: {src_path} has {len(src)} lines but "
                               f"{tgt_path} has {len(tgt)} lines")
        return src, tgt
    if cfg.valid is None:
        valid = synthetic_pairs(cfg)["valid"].head(cfg.max_valid_sentences)
        return [" ".join(s) for s in valid.src], [" ".join(t) for t in valid.tgt]
    src_path, tgt_path = resolve_pair(cfg.valid, cfg.src_lang, cfg.tgt_lang)
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    n = cfg.max_valid_sentences
    return (src[:n], tgt[:n]) if n else (src, tgt)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from varattn.nmt.batching import collate
    from varattn.nmt.evaluate import evaluate

    trained = open_run(args)
    if args.topk is not None and trained.objective.predictive != "marginal" and trained.mode != "soft":
        raise VarattnError(f"--topk applies to categorical models, not {trained.mode}")
    if args.topk is not None and args.topk < 1:
        raise VarattnError("--topk must be at least 1")
    src, tgt = _resolve_eval_pairs(args, trained)
    pairs = [(trained.encode_src(s), trained.encode_tgt(t)) for s, t in zip(src, tgt)]
    pairs = [(s, t) for s, t in pairs if s]  # an empty source has nothing to attend to
    if not pairs:
        raise VarattnError("no sentence pairs to evaluate")
    batches = [
        collate([p[0] for p in pairs[i : i + args.batch_size]], [p[1] for p in pairs[i : i + args.batch_size]],
                trained.tgt_vocab, list(range(i, min(i + args.batch_size, len(pairs)))))
        for i in range(0, len(pairs), args.batch_size)
    ]
    result = evaluate(trained.model, trained.objective, batches, topk=args.topk)
    result["mode"] = trained.mode
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"mode {trained.mode} | {result['sentences']} sentences, {result['tokens']} tokens")
    label = "sampled perplexity   " if result.get("importance_samples") else "exact perplexity     "
    print(f"{label} {result['ppl']:.4f}")
    if result.get("elbo_ppl") is not None:
        print(f"ELBO perplexity       {result['elbo_ppl']:.4f}")
    if "kmax_ppl" in result:
        print(f"K-max perplexity (K={args.topk}) {result['kmax_ppl']:.4f}")
    print(f"prior entropy         {result['prior_entropy']:.4f}")
    if result.get("posterior_entropy") is not None:
        print(f"posterior entropy     {result['posterior_entropy']:.4f}")
    print(f"token accuracy        {result['accuracy']:.4f}")
    if result.get("importance_samples"):
        print(f"(importance-sampled with {result['importance_samples']} samples per token)")
    return 0


def cmd_toy_data(args: argparse.Namespace) -> int:
    from varattn.data.synthetic import make_splits, write_splits

    sizes = args.sizes or [6000, 300, 300]
    splits = make_splits(seed=args.seed, n_train=sizes[0], n_valid=sizes[1], n_test=sizes[2])
    out = write_splits(args.out, splits)
    print(f"wrote the synthetic corpus to {out}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from varattn.latent import mode_names

    parser = argparse.ArgumentParser(prog="varattn", description="Latent alignment and variational attention.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="exact perplexity, ELBO and K-max of a trained run")
    add_run_arguments(p)
    _add_corpus_flags(p)
    p.add_argument("--topk", type=int, help="also report the K-max perplexity")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("toy-data", help="write the synthetic corpus (train/valid/test .src .tgt .align)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", type=int, nargs=3, metavar=("TRAIN", "VALID", "TEST"))
    p.set_defaults(func=cmd_toy_data)

    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        return args.func(args)
    except VarattnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
