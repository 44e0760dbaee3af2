"""The translation task in the task registry (``varattn.training.registry``): ``NMT``.

What ``varattn train`` / ``varattn evaluate`` / ``varattn.load`` need of translation beyond the training
task itself: its flags (corpus prefixes and languages, token batches), how a trained run opens
(``varattn.nmt.run.open_trained``) and how ``varattn evaluate`` scores one and reports it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from varattn.errors import VarattnError
from varattn.nmt.builder import model_config_from_dict
from varattn.nmt.config import CONFIG_DIR, TrainConfig
from varattn.nmt.run import TrainedModel, open_trained, skipped_line
from varattn.nmt.task import NMTTask
from varattn.training.registry import EvaluationReport, TaskSpec, register_task

log = logging.getLogger("varattn")
#: ``varattn evaluate``'s sentences per batch without ``--batch-size``
EVALUATE_BATCH_SIZE = 32


def corpus_flags(p: argparse.ArgumentParser, stdin: bool = False) -> None:
    """``--prefix``, ``--src``, ``--tgt``, ``--src-lang``, ``--tgt-lang`` naming a parallel corpus."""
    p.add_argument("--prefix", help="fairseq-style prefix: reads PREFIX.SRC_LANG and PREFIX.TGT_LANG")
    either = " ('-' for stdin)" if stdin else ""
    p.add_argument("--src", help="source file" + either)
    p.add_argument("--tgt", help="target file" + either)
    p.add_argument("--src-lang", default=None, help="source language suffix (default: the run's)")
    p.add_argument("--tgt-lang", default=None, help="target language suffix (default: the run's)")


def train_flags(p: argparse.ArgumentParser) -> None:
    """The translation keys ``varattn train`` sets by flag (each flag's dest is the config key)."""
    p.add_argument("--train", help="training corpus prefix (PREFIX.SRC_LANG, PREFIX.TGT_LANG)")
    p.add_argument("--valid", help="validation corpus prefix")
    p.add_argument("--src-lang")
    p.add_argument("--tgt-lang")
    p.add_argument("--batch-tokens", type=int, help="batch by padded target tokens instead of sentences")


def fresh_config(cfg: TrainConfig, flags: dict) -> None:
    """Corpora written by ``varattn toy-data`` end in ``.src``/``.tgt``: read those when the languages were not
    named and the config's ``PREFIX.SRC_LANG`` files do not exist."""
    if flags.get("src_lang") is not None or flags.get("tgt_lang") is not None:
        return
    prefixes = [p for p in (cfg.train, cfg.valid) if p is not None]
    if not prefixes or any(Path(f"{p}.{cfg.src_lang}").exists() for p in prefixes):
        return
    if all(Path(f"{p}.src").is_file() and Path(f"{p}.tgt").is_file() for p in prefixes):
        log.info("reading %s (the .src/.tgt files of varattn toy-data; --src-lang/--tgt-lang choose others)",
                 ", ".join(f"{p}.src/.tgt" for p in prefixes))
        cfg.src_lang, cfg.tgt_lang = "src", "tgt"


def evaluate_flags(p: argparse.ArgumentParser) -> None:
    corpus_flags(p)
    p.add_argument("--topk", type=int, help="also report the K-max perplexity")
    p.add_argument("--samples", type=int, metavar="N",
                   help="importance samples per token of a sampled perplexity (the relaxed model)")
    p.add_argument("--seed", type=int, help="seed torch's random generator (sampled estimates)")


def corpus_lines(args: argparse.Namespace, trained: TrainedModel) -> tuple[list[str], list[str]]:
    """Source/target lines from ``--prefix``/``--src``/``--tgt``, or the run's own validation data."""
    from varattn.nmt.corpora.corpus import read_lines, resolve_pair

    if not (args.src or args.tgt or args.prefix):
        return trained.valid_lines()
    cfg = trained.config
    src_path, tgt_path = resolve_pair(args.prefix, args.src_lang or cfg.src_lang, args.tgt_lang or cfg.tgt_lang,
                                      args.src, args.tgt)
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise VarattnError(f"parallel files differ in length: {src_path} has {len(src)} lines but "
                           f"{tgt_path} has {len(tgt)} lines")
    return src, tgt


def evaluate_run(trained: TrainedModel, args: argparse.Namespace) -> EvaluationReport:
    """Exact perplexity, ELBO, K-max and token accuracy of a translation run; pairs left out are counted."""
    from varattn.nmt.evaluate import perplexity_name

    if args.topk is not None and not trained.objective.supports_kmax:
        raise VarattnError(f"--topk applies to categorical models, not {trained.mode}")
    if args.topk is not None and args.topk < 1:
        raise VarattnError("--topk must be at least 1")
    if args.samples is not None:
        trained.objective.set_eval_samples(args.samples)  # one-line error for modes scored exactly
    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    src, tgt = corpus_lines(args, trained)
    size = EVALUATE_BATCH_SIZE if args.batch_size is None else args.batch_size
    result = trained.evaluate(src, tgt, size, args.topk)
    lines = [f"mode {trained.mode} | {result['sentences']} sentences, {result['tokens']} tokens",
             f"{perplexity_name(result)} {result['ppl']:.4f}"]
    if result.get("elbo_ppl") is not None:
        lines.append(f"ELBO perplexity       {result['elbo_ppl']:.4f}")
    if "kmax_ppl" in result:
        lines.append(f"K-max perplexity (K={args.topk}) {result['kmax_ppl']:.4f}")
    lines.append(f"prior entropy         {result['prior_entropy']:.4f}")
    if result.get("posterior_entropy") is not None:
        lines.append(f"posterior entropy     {result['posterior_entropy']:.4f}")
    lines.append(f"token accuracy        {result['accuracy']:.4f}")
    skipped = skipped_line(result["skipped"], len(src))
    return result, [*lines, *([skipped] if skipped else [])]


def summary(cfg: TrainConfig, result: dict, run_dir: Path) -> str:
    from varattn.nmt.evaluate import perplexity_name

    elbo = f" | ELBO perplexity {result['elbo_ppl']:.3f}" if result.get("elbo_ppl") is not None else ""
    return (f"{cfg.mode}: step {result['step']} | {perplexity_name(result)} {result['ppl']:.3f}{elbo} | "
            f"token accuracy {result['accuracy']:.3f} | {result['tokens']} validation tokens | run: {run_dir}")


NMT = register_task(TaskSpec(
    name="nmt", title="translation", config=TrainConfig, task=NMTTask, open_run=open_trained,
    model_config=model_config_from_dict, evaluate=evaluate_run, evaluate_flags=evaluate_flags, train_flags=train_flags,
    fresh_config=fresh_config, config_dir=CONFIG_DIR, default_config="toy", run_name="{mode}", summary=summary,
    commands="varattn evaluate, translate, align or plot (continue it with varattn train --resume)",
))

__all__ = ["NMT", "corpus_flags"]
