"""``varattn translate``: beam search (exact marginal or K-max), word alignments, BLEU.

It streams: it reads ``--batch-size`` lines, translates them, writes and flushes their
output lines, then reads more, so it can sit in a pipe (and stops quietly when its reader
goes away, ``| head -1``). It writes exactly one line per input line, in order (an empty
input line gives an empty output line).
"""

from __future__ import annotations

import argparse
import sys

from varattn.commands.common import (
    UnknownTokens,
    add_run_arguments,
    check_batch_size,
    chunks,
    open_run,
    output_stream,
    streamed_input,
)
from varattn.errors import VarattnError
from varattn.nmt.align import Link

ALIGN_SEPARATOR = " ||| "


def register(sub) -> None:
    from varattn.nmt.search import DEFAULT_ALPHA, DEFAULT_MAX_LEN_A, DEFAULT_MAX_LEN_B, DecodingOptions

    defaults = DecodingOptions()
    p = sub.add_parser("translate", help="translate lines with beam search (exact marginal or K-max)",
                       description="Translate one sentence per line (stdin or --input) with a trained run; "
                                   "writes exactly one output line per input line, streaming.")
    add_run_arguments(p)
    p.add_argument("--input", help="source file, one sentence per line (default: stdin)")
    p.add_argument("--output", help="output file (default: stdout)")
    p.add_argument("--beam", type=int, default=defaults.beam, help=f"beam size; 1 = greedy (default {defaults.beam})")
    p.add_argument("--topk", type=int,
                   help="K-max: keep only the K best alignment positions at each step; 0 = every position "
                        "(default: 5 for the models that sum over the alignment, every position otherwise)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"Wu et al. length penalty exponent, 0 = none (default {DEFAULT_ALPHA})")
    p.add_argument("--eos-norm", type=float, default=defaults.eos_norm,
                   help="EOS normalisation: log p(</s>) -= X * src_len / (cur_len + 1) (default 0 = off; "
                        "the authors used 3)")
    p.add_argument("--max-len-a", type=float, default=DEFAULT_MAX_LEN_A,
                   help=f"at most A * src_len + B output tokens (default A = {DEFAULT_MAX_LEN_A})")
    p.add_argument("--max-len-b", type=float, default=DEFAULT_MAX_LEN_B, help=f"(default B = {DEFAULT_MAX_LEN_B})")
    p.add_argument("--max-src-len", type=int, default=250,
                   help="longer source lines are cut to this many tokens, with a warning (default 250)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch and per output flush")
    p.add_argument("--keep-bpe", action="store_true", help="print target pieces, BPE marks kept")
    p.add_argument("--align", action="store_true",
                   help="append ' ||| ' and 0-based src-tgt word links (pieces with --keep-bpe) from the prior")
    p.add_argument("--ref", help="reference file: print BLEU to stderr at the end")
    p.add_argument("--sample-alignments", type=int, metavar="K",
                   help="relaxed models: predict each word from K alignments sampled from the prior Dirichlet "
                        "(as the paper evaluates it) instead of its mean")
    p.add_argument("--seed", type=int, help="seed torch's random generator (sampled alignments)")
    p.set_defaults(func=run)


def decoding_options(args: argparse.Namespace):
    """The ``DecodingOptions`` the flags ask for (checked: a bad value is a one-line error)."""
    from varattn.nmt.search import DecodingOptions

    return DecodingOptions(beam=args.beam, topk=args.topk, alpha=args.alpha, eos_norm=args.eos_norm,
                           max_len_a=args.max_len_a, max_len_b=args.max_len_b,
                           sample_alignments=getattr(args, "sample_alignments", None))


def word_links(translation, src_style: str, tgt_style: str, keep_bpe: bool = False) -> set[Link]:
    """Pharaoh links ``(src, tgt)`` from the argmax of the prior at each produced piece.

    Indices are 0-based words (pieces merged per ``src_style``/``tgt_style``), or pieces with
    ``keep_bpe``.
    """
    from varattn.nmt.align import links_to_words, subword_to_word_map

    align = translation.alignment
    if not translation.tokens or align.numel() == 0:
        return set()
    links = [(int(i), j) for j, i in enumerate(align.argmax(dim=-1).tolist())]
    if keep_bpe:
        return set(links)
    src_map = subword_to_word_map(translation.src_tokens, src_style)
    tgt_map = subword_to_word_map(translation.tokens, tgt_style)
    return links_to_words(links, src_map, tgt_map)


def run(args: argparse.Namespace) -> int:
    from varattn.nmt.align import format_pharaoh
    from varattn.nmt.bleu import quiet_bleu
    from varattn.nmt.corpora.corpus import read_lines

    check_batch_size(args.batch_size)
    if args.max_src_len < 1:
        raise VarattnError(f"--max-src-len must be at least 1, got {args.max_src_len}")
    options = decoding_options(args)
    refs = read_lines(args.ref) if args.ref else None
    trained = open_run(args)
    options.check_for(trained.objective)
    if getattr(args, "seed", None) is not None:
        import torch

        torch.manual_seed(args.seed)
    hyps: list[str] = []
    unknown = UnknownTokens()
    with streamed_input(args.input) as lines, output_stream(args.output) as out:
        done = 0
        for chunk in chunks(lines, args.batch_size):
            results = trained.translate(chunk, options, batch_size=args.batch_size, max_src_len=args.max_src_len,
                                        line_offset=done)
            for k, res in enumerate(results):
                unknown.add("source", trained.unknown(res.src_tokens), len(res.src_tokens), done + k + 1)
                text = trained.tgt_seg.detokenize(res.tokens, keep_bpe=True) if args.keep_bpe else res.text
                if refs is not None:
                    hyps.append(res.text)
                if args.align:
                    links = word_links(res, trained.src_seg.piece_style, trained.tgt_seg.piece_style, args.keep_bpe)
                    text += ALIGN_SEPARATOR + format_pharaoh(links)
                out.write(text + "\n")
            out.flush()
            done += len(chunk)
    unknown.report()
    if refs is not None:
        from varattn.nmt.bleu import format_bleu

        if len(refs) != len(hyps):
            raise VarattnError(f"--ref {args.ref} has {len(refs)} lines but the input had {len(hyps)}")
        print(format_bleu(quiet_bleu(hyps, refs)), file=sys.stderr)
    return 0
