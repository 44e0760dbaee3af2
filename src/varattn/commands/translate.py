"""``varattn translate`` (beam search, K-max, alignments, BLEU) and ``varattn bleu``.

``translate`` streams: it reads ``--batch-size`` lines, translates them, writes and flushes
their output lines, then reads more, so it can sit at the end of a pipe. It writes exactly
one line per input line, in order (an empty input line gives an empty output line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator

from varattn.commands.common import add_run_arguments, chunks, open_run
from varattn.errors import VarattnError

ALIGN_SEPARATOR = " ||| "


def _open_input(path: str | None) -> tuple[Iterator[str], object | None]:
    from varattn.data.corpus import iter_lines

    if path is None or path == "-":
        return iter_lines(sys.stdin, "<stdin>"), None
    if os.path.isdir(path):
        raise VarattnError(f"{path} is a directory, expected a text file")
    if not os.path.exists(path):
        raise VarattnError(f"file not found: {path}")
    try:
        handle = open(path, "rb")  # closed by the caller
    except OSError as exc:
        raise VarattnError(f"cannot read {path}: {exc.strerror or exc}") from None
    return iter_lines(handle, str(path)), handle


def word_links(translation, src_style: str, tgt_style: str, keep_bpe: bool = False) -> set[tuple[int, int]]:
    """Pharaoh links ``(src, tgt)`` from the argmax of the prior at each produced piece.

    Indices are 0-based words (pieces merged per ``src_style``/``tgt_style``), or pieces with
    ``keep_bpe``.
    """
    from varattn.align import links_to_words, subword_to_word_map

    align = translation.alignment
    if not translation.tokens or align.numel() == 0:
        return set()
    links = [(int(i), j) for j, i in enumerate(align.argmax(dim=-1).tolist())]
    if keep_bpe:
        return set(links)
    src_map = subword_to_word_map(translation.src_tokens, src_style)
    tgt_map = subword_to_word_map(translation.tokens, tgt_style)
    return links_to_words(links, src_map, tgt_map)


def quiet_bleu(hyps: list[str], refs: list[str]) -> dict:
    """``varattn.bleu.corpus_bleu`` without sacrebleu's "tokenized period" warning.

    The tokenized score is computed on tokenized text on purpose, so that warning is noise.
    """
    from varattn.bleu import corpus_bleu

    logger = logging.getLogger("sacrebleu")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return corpus_bleu(hyps, refs)
    finally:
        logger.setLevel(level)


def cmd_translate(args: argparse.Namespace) -> int:
    from varattn.align import format_pharaoh
    from varattn.data.corpus import read_lines
    from varattn.nmt.search import check_options

    if args.batch_size < 1:
        raise VarattnError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_src_len < 1:
        raise VarattnError(f"--max-src-len must be at least 1, got {args.max_src_len}")
    refs = read_lines(args.ref) if args.ref else None
    trained = open_run(args)
    options = dict(beam=args.beam, topk=args.topk, alpha=args.alpha, eos_norm=args.eos_norm,
                   max_len_a=args.max_len_a, max_len_b=args.max_len_b)
    check_options(**options, predictive=trained.objective.predictive)
    lines, handle = _open_input(args.input)
    out = sys.stdout if args.output is None or args.output == "-" else None
    hyps: list[str] = []
    try:
        if out is None:
            try:
                out = open(args.output, "w", encoding="utf-8", newline="\n")
            except OSError as exc:
                raise VarattnError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        done = 0
        for chunk in chunks(lines, args.batch_size):
            results = trained.translate(chunk, batch_size=args.batch_size, max_src_len=args.max_src_len,
                                        line_offset=done, **options)
            for res in results:
                text = trained.tgt_seg.detokenize(res.tokens, keep_bpe=True) if args.keep_bpe else res.text
                if refs is not None:
                    hyps.append(res.text)
                if args.align:
                    links = word_links(res, trained.src_seg.piece_style, trained.tgt_seg.piece_style, args.keep_bpe)
                    text += ALIGN_SEPARATOR + format_pharaoh(links)
                out.write(text + "\n")
            out.flush()
            done += len(chunk)
    finally:
        if handle is not None:
            handle.close()
        if out is not None and out is not sys.stdout:
            out.close()
    if refs is not None:
        from varattn.bleu import format_bleu

        if len(refs) != len(hyps):
            raise VarattnError(f"--ref {args.ref} has {len(refs)} lines but the input had {len(hyps)}")
        print(format_bleu(quiet_bleu(hyps, refs)), file=sys.stderr)
    return 0


def cmd_bleu(args: argparse.Namespace) -> int:
    from varattn.bleu import format_bleu
    from varattn.data.corpus import iter_lines, read_lines

    refs = read_lines(args.ref)
    hyps = read_lines(args.hyp) if args.hyp and args.hyp != "-" else list(iter_lines(sys.stdin, "<stdin>"))
    result = quiet_bleu(hyps, refs)
    print(json.dumps(result) if args.json else format_bleu(result))
    return 0


def register(sub) -> None:
    from varattn.nmt.search import DEFAULT_ALPHA, DEFAULT_MAX_LEN_A, DEFAULT_MAX_LEN_B

    p = sub.add_parser("translate", help="translate lines with beam search (exact marginal or K-max)",
                       description="Translate one sentence per line (stdin or --input) with a trained run; "
                                   "writes exactly one output line per input line, streaming.")
    add_run_arguments(p)
    p.add_argument("--input", help="source file, one sentence per line (default: stdin)")
    p.add_argument("--output", help="output file (default: stdout)")
    p.add_argument("--beam", type=int, default=5, help="beam size; 1 = greedy (default 5)")
    p.add_argument("--topk", type=int, help="K-max: keep only the K best alignment positions at each step")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"Wu et al. length penalty exponent, 0 = none (default {DEFAULT_ALPHA})")
    p.add_argument("--eos-norm", type=float, default=0.0,
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
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("bleu", help="corpus BLEU: tokenized-lowercased and detokenized sacreBLEU")
    p.add_argument("--ref", required=True, help="reference file, one sentence per line")
    p.add_argument("--hyp", help="hypothesis file (default: stdin)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_bleu)
