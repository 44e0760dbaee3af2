"""``varattn evaluate``: exact perplexity, ELBO, K-max and token accuracy of a trained run.

Pairs the model cannot score are left out and counted, by reason, in the report (the
``skipped`` key of ``--json``): today the only reason is an empty source (nothing to attend
to). An empty target is scored (it is just ``</s>``).
"""

from __future__ import annotations

import argparse
import json

from varattn.commands.common import add_corpus_arguments, add_run_arguments, check_batch_size, open_run
from varattn.errors import VarattnError

#: why a pair is left out -> the words the text report uses
SKIP_REASONS = {"empty_source": "with an empty source"}


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="exact perplexity, ELBO and K-max of a trained run")
    add_run_arguments(p)
    add_corpus_arguments(p)
    p.add_argument("--topk", type=int, help="also report the K-max perplexity")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--samples", type=int, metavar="N",
                   help="importance samples per token of a sampled perplexity (the relaxed model)")
    p.add_argument("--seed", type=int, help="seed torch's random generator (sampled estimates)")
    p.set_defaults(func=run)


def _pairs(args: argparse.Namespace, trained) -> tuple[list[str], list[str]]:
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


def encode_pairs(trained, src: list[str], tgt: list[str]) -> tuple[list[tuple[list[int], list[int]]], dict]:
    """The pairs as ids, without those the model cannot score; and ``{reason: count}`` of those left out."""
    kept, skipped = [], dict.fromkeys(SKIP_REASONS, 0)
    for s, t in zip(src, tgt):
        s_ids = trained.encode_src(s)
        if not s_ids:
            skipped["empty_source"] += 1
            continue
        kept.append((s_ids, trained.encode_tgt(t)))
    return kept, skipped


def skipped_line(skipped: dict, total: int) -> str | None:
    """``skipped 3 of 300 pairs: 3 with an empty source``, or None when nothing was skipped."""
    n = sum(skipped.values())
    if not n:
        return None
    reasons = ", ".join(f"{count} {SKIP_REASONS[key]}" for key, count in skipped.items() if count)
    return f"skipped {n} of {total} pairs: {reasons}"


def run(args: argparse.Namespace) -> int:
    from varattn.nmt.batching import collate, index_batches
    from varattn.nmt.evaluate import evaluate, perplexity_name

    check_batch_size(args.batch_size)
    trained = open_run(args)
    if args.topk is not None and not trained.objective.supports_kmax:
        raise VarattnError(f"--topk applies to categorical models, not {trained.mode}")
    if args.topk is not None and args.topk < 1:
        raise VarattnError("--topk must be at least 1")
    if args.samples is not None:
        trained.objective.set_eval_samples(args.samples)  # one-line error for modes scored exactly
    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    src, tgt = _pairs(args, trained)
    pairs, skipped = encode_pairs(trained, src, tgt)
    if not pairs:
        reason = skipped_line(skipped, len(src))
        raise VarattnError("no sentence pairs to evaluate" + (f" ({reason})" if reason else ""))
    batches = [collate([pairs[k][0] for k in chunk], [pairs[k][1] for k in chunk], chunk)
               for chunk in index_batches(range(len(pairs)), args.batch_size)]
    result = evaluate(trained.model, trained.objective, batches, topk=args.topk)
    result["mode"] = trained.mode
    result["skipped"] = skipped
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"mode {trained.mode} | {result['sentences']} sentences, {result['tokens']} tokens")
    print(f"{perplexity_name(result)} {result['ppl']:.4f}")
    if result.get("elbo_ppl") is not None:
        print(f"ELBO perplexity       {result['elbo_ppl']:.4f}")
    if "kmax_ppl" in result:
        print(f"K-max perplexity (K={args.topk}) {result['kmax_ppl']:.4f}")
    print(f"prior entropy         {result['prior_entropy']:.4f}")
    if result.get("posterior_entropy") is not None:
        print(f"posterior entropy     {result['posterior_entropy']:.4f}")
    print(f"token accuracy        {result['accuracy']:.4f}")
    line = skipped_line(skipped, len(src))
    if line:
        print(line)
    return 0
