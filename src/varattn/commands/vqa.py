"""``varattn vqa``: visual question answering with a latent region (train, evaluate, answer, plot)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from varattn.errors import VarattnError

log = logging.getLogger("varattn")

#: training flags that --resume may change; every other setting comes from the run's run.json
RESUMABLE = ("max_steps", "epochs", "max_minutes", "threads", "device")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory written by varattn vqa train")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU if there is one, else the CPU), cpu, cuda:N")


def _input_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", help="the picture (easy-VQA runs: their CNN reads it; feature runs: drawn only)")
    p.add_argument("--image-id", help="region-feature runs: the image's id in the feature file")
    p.add_argument("--features", help="region-feature runs: feature file (default: the run's validation features)")
    p.add_argument("--question", required=True)


def register(sub) -> None:
    from varattn.latent import mode_names

    vqa = sub.add_parser("vqa", help="visual question answering with a latent image region")
    vqa.set_defaults(func=run)  # run() hands over to the nested subcommand's vqa_func
    cmds = vqa.add_subparsers(dest="vqa_command", required=True)

    p = cmds.add_parser("train", help="train (default: easy-VQA, which the easy-vqa package ships)")
    p.add_argument("--config", default="easy", help="YAML config path or shipped name: easy, vqa2")
    p.add_argument("--mode", help="training mode: " + ", ".join(mode_names()))
    p.add_argument("--out", help="run directory (default runs/vqa-MODE)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run where it stopped")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-minutes", type=float, help="stop (and validate) after this much wall-clock time")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int, help="questions per batch")
    p.add_argument("--lr", type=float)
    p.add_argument("--eval-every", type=int, help="validate every N updates (default: every epoch)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set data.train_features=feats.h5 --set model.dropout=0.3")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-tensorboard", action="store_true")
    p.set_defaults(func=run, vqa_func=cmd_train)

    p = cmds.add_parser("evaluate", help="VQA accuracy, exact NLL, ELBO and entropies of a trained run")
    _run_arguments(p)
    p.add_argument("--split", default="test", choices=["test", "valid"],
                   help="easy-VQA: its test split (default) or the run's held-out validation images")
    p.add_argument("--questions", help="VQA 2.0 questions JSON (default: the run's validation files)")
    p.add_argument("--annotations", help="VQA 2.0 annotations JSON")
    p.add_argument("--features", help="region feature file of those questions' images")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run, vqa_func=cmd_evaluate)

    p = cmds.add_parser("answer", help="the top answers to a question about an image, with probabilities")
    _run_arguments(p)
    _input_arguments(p)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run, vqa_func=cmd_answer)

    p = cmds.add_parser("plot", help="draw the image with the prior, q and the exact posterior over its regions")
    _run_arguments(p)
    _input_arguments(p)
    p.add_argument("--answer", help="the answer the posteriors condition on (default: the model's top answer)")
    p.add_argument("-o", "--output", required=True, help="image file to write (png, pdf, svg)")
    p.set_defaults(func=run, vqa_func=cmd_plot)


def run(args: argparse.Namespace) -> int:
    return args.vqa_func(args)


def _config(args: argparse.Namespace):
    from varattn.training.run_info import parse_section, read_run_info
    from varattn.vqa.config import VQAConfig, load_config

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "run.json").is_file():
            raise VarattnError(f"nothing to resume in {run_dir} (no run.json)")
        fixed = {"--mode": args.mode, "--out": args.out, "--seed": args.seed, "--batch-size": args.batch_size,
                 "--lr": args.lr, "--eval-every": args.eval_every, "--set": args.set or None}
        given = [flag for flag, value in fixed.items() if value is not None]
        if given:
            raise VarattnError(f"--resume continues the run as configured in {run_dir / 'run.json'}; drop "
                               f"{', '.join(given)} (only --max-steps, --epochs, --max-minutes, --threads and --device "
                               "change)")
        info = read_run_info(run_dir, "vqa")
        d = info["config"]
        for key in RESUMABLE:
            if getattr(args, key) is not None:
                d[key] = getattr(args, key)
        return parse_section(run_dir, "config", lambda: VQAConfig.from_dict(d)), run_dir
    overrides = {"mode": args.mode, "max_steps": args.max_steps, "epochs": args.epochs, "seed": args.seed,
                 "batch_size": args.batch_size, "lr": args.lr, "eval_every": args.eval_every, "threads": args.threads,
                 "max_minutes": args.max_minutes, "device": args.device}
    cfg = load_config(args.config, overrides, args.set)
    return cfg, Path(args.out or f"runs/vqa-{cfg.mode}")


def cmd_train(args: argparse.Namespace) -> int:
    from varattn.vqa.train import train

    cfg, run_dir = _config(args)
    log.info("training %s (VQA, %s) into %s", cfg.mode, cfg.data.source, run_dir)
    result = train(cfg, run_dir, resume=bool(args.resume), progress=None if not args.no_progress else False,
                   tensorboard=not args.no_tensorboard)
    elbo = f" | -ELBO {result['elbo_nll']:.4f}" if result.get("elbo_nll") is not None else ""
    print(f"{cfg.mode}: step {result['step']} | valid accuracy {result['accuracy']:.4f} | NLL {result['nll']:.4f}"
          f"{elbo} | {result['questions']} validation questions | run: {run_dir}")
    return 0


def _load(args: argparse.Namespace):
    from varattn.vqa.run import load_run

    return load_run(args.run_dir, args.checkpoint, args.device)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise VarattnError("--limit must be at least 1")
    if args.batch_size < 1:
        raise VarattnError("--batch-size must be at least 1")
    if bool(args.questions) != bool(args.annotations):
        raise VarattnError("give --questions and --annotations together")
    trained = _load(args)
    result = trained.evaluate(args.split, args.questions, args.annotations, args.features, args.batch_size, args.limit)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"mode {trained.mode} | {result['questions']} questions ({result['scored_questions']} with an answer in "
          "the vocabulary)")
    print(f"VQA accuracy          {result['accuracy']:.4f}")
    for kind, value in result["accuracy_by_type"].items():
        print(f"  {kind:<19} {value:.4f}")
    print(f"exact NLL             {result['nll']:.4f}")
    if result["elbo_nll"] is not None:
        print(f"-ELBO                 {result['elbo_nll']:.4f}")
    print(f"prior entropy         {result['prior_entropy']:.4f}")
    if result["posterior_entropy"] is not None:
        print(f"posterior entropy     {result['posterior_entropy']:.4f}")
    if result["exact_posterior_entropy"] is not None:
        print(f"exact posterior ent.  {result['exact_posterior_entropy']:.4f}")
    return 0


def _inputs(args: argparse.Namespace, trained) -> dict:
    if trained.model.cnn is not None:
        if not args.image:
            raise VarattnError("this run reads raw images: give --image")
        return {"image": args.image}
    if not args.image_id:
        raise VarattnError("this run reads region features: give --image-id (and --features)")
    return {"image_id": args.image_id, "features": args.features}


def cmd_answer(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise VarattnError("--top must be at least 1")
    trained = _load(args)
    unknown, words = _unknown_words(trained, args.question)
    answers = trained.answer(args.question, top=args.top, **_inputs(args, trained))
    if args.json:
        print(json.dumps([{"answer": a, "probability": p, "unknown_words": unknown, "question_words": words}
                          for a, p in answers]))
        return 0
    for answer, prob in answers:
        print(f"{prob:.4f}\t{answer}")
    return 0


def _unknown_words(trained, question: str) -> tuple[int, int]:
    """``(unknown, total)`` words of the question, said on stderr when some are unknown (an empty question: error)."""
    unknown, words = trained.unknown_words(question)
    if unknown:
        log.warning("%d of the question's %d words are not in the model's vocabulary (read as <unk>)%s", unknown,
                    words, ": the answer is a guess" if unknown == words else "")
    return unknown, words


def cmd_plot(args: argparse.Namespace) -> int:
    from varattn.vqa.plot import plot_regions

    trained = _load(args)
    _unknown_words(trained, args.question)
    regions = trained.regions(args.question, answer=args.answer, **_inputs(args, trained))
    out = plot_regions(regions, args.output, image=args.image, question=args.question)
    print(f"wrote {out}")
    return 0
