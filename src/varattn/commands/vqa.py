"""``varattn vqa``: visual question answering with a latent region (answer, plot; train and evaluate).

``vqa train`` and ``vqa evaluate`` are ``varattn train --task vqa`` and ``varattn evaluate`` limited to VQA
runs, with VQA's flags only: the spellings of the first releases, kept so that nothing a user typed breaks.
"""

from __future__ import annotations

import argparse
import json
import logging

from varattn.commands import evaluate, train
from varattn.commands.common import add_run_arguments, open_run
from varattn.commands.evaluate import add_evaluate_arguments
from varattn.commands.train import add_train_arguments
from varattn.errors import VarattnError

log = logging.getLogger("varattn")

TASK = "vqa"


def _input_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", help="the picture (easy-VQA runs: their CNN reads it; feature runs: drawn only)")
    p.add_argument("--image-id", help="region-feature runs: the image's id in the feature file")
    p.add_argument("--features", help="region-feature runs: feature file (default: the run's validation features)")
    p.add_argument("--question", required=True)


def register(sub) -> None:
    vqa = sub.add_parser("vqa", help="visual question answering with a latent image region")
    vqa.set_defaults(func=run)  # run() hands over to the nested subcommand's vqa_func
    cmds = vqa.add_subparsers(dest="vqa_command", required=True)

    p = cmds.add_parser("train", help="train (default: easy-VQA, which the easy-vqa package ships); "
                        "the same as varattn train --task vqa")
    add_train_arguments(p, [TASK])
    p.set_defaults(func=run, vqa_func=train.run, task=TASK)

    p = cmds.add_parser("evaluate", help="VQA accuracy, exact NLL, ELBO and entropies of a trained run; the same as "
                        "varattn evaluate")
    add_evaluate_arguments(p, [TASK])
    p.set_defaults(func=run, vqa_func=evaluate.run, task=TASK)

    p = cmds.add_parser("answer", help="the top answers to a question about an image, with probabilities")
    add_run_arguments(p)
    _input_arguments(p)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run, vqa_func=cmd_answer)

    p = cmds.add_parser("plot", help="draw the image with the prior, q and the exact posterior over its regions")
    add_run_arguments(p)
    _input_arguments(p)
    p.add_argument("--answer", help="the answer the posteriors condition on (default: the model's top answer)")
    p.add_argument("-o", "--output", required=True, help="image file to write (png, pdf, svg)")
    p.set_defaults(func=run, vqa_func=cmd_plot)


def run(args: argparse.Namespace) -> int:
    return args.vqa_func(args)


def _load(args: argparse.Namespace):
    return open_run(args, TASK)


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
