"""``varattn align``: word alignments of sentence pairs (Pharaoh links) and the alignment error rate.

It writes exactly one line per input sentence pair, in order, flushing after every
batch (so it can sit in a pipe): the 0-based Pharaoh links ``src-tgt`` of that pair, sorted,
or with ``--json`` one JSON object. A pair with an empty side gives an empty links line.

Where the AER goes with ``--gold``: the links are the data and the AER is the report, so
they never share a stream. Links on stdout (no ``--output``, or ``--output -``): the AER JSON
object goes to **stderr**. Links in a file (``--output FILE``): the AER JSON goes to
**stdout**. The object is ``{"aer": ..., "precision": ..., "recall": ..., "sentences": ...,
"method": ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys

from varattn.commands.common import (
    STDIO,
    UnknownTokens,
    add_corpus_arguments,
    add_run_arguments,
    check_batch_size,
    chunks,
    input_lines,
    open_run,
    output_stream,
    paired,
    stream_name,
    writes_to_stdout,
)
from varattn.errors import VarattnError
from varattn.nmt.align import Link


def _resolve_files(args, trained) -> tuple[str, str]:
    from varattn.nmt.corpora.corpus import resolve_pair

    if args.src is None and args.tgt is None and args.prefix is None:
        raise VarattnError("name the sentence pairs with --src FILE --tgt FILE, "
                           "or --prefix (with --src-lang/--tgt-lang)")
    if args.src == STDIO and args.tgt == STDIO:
        raise VarattnError("only one of --src and --tgt can be read from stdin")
    cfg = trained.config
    src_lang, tgt_lang = args.src_lang or cfg.src_lang, args.tgt_lang or cfg.tgt_lang
    if args.src == STDIO or args.tgt == STDIO:
        other = args.tgt if args.src == STDIO else args.src
        lang = tgt_lang if args.src == STDIO else src_lang
        if other is None:
            if args.prefix is None:
                raise VarattnError("give both --src and --tgt (or --prefix for the side not read from stdin)")
            other = f"{args.prefix}.{lang}"
        from varattn.nmt.corpora.corpus import read_lines

        read_lines(other)  # fail early on a missing file
        return (STDIO, other) if args.src == STDIO else (other, STDIO)
    src_path, tgt_path = resolve_pair(args.prefix, src_lang, tgt_lang, args.src, args.tgt)
    return str(src_path), str(tgt_path)


def run(args: argparse.Namespace) -> int:
    from varattn.nmt.align import alignment_error_rate, check_gold_sizes, read_gold_file
    from varattn.nmt.posterior import check_methods, check_threshold

    check_batch_size(args.batch_size)
    check_threshold(args.threshold)
    if args.gold is not None and args.gold_format is None:
        raise VarattnError("--gold needs --gold-format talp|pharaoh (talp files are 1-based, pharaoh 0-based)")
    if args.gold_format is not None and args.gold is None:
        raise VarattnError("--gold-format only applies with --gold FILE")
    trained = open_run(args)
    check_methods(trained, [args.method])
    src_path, tgt_path = _resolve_files(args, trained)
    src = input_lines(src_path)
    tgt = input_lines(tgt_path)
    src_name, tgt_name = stream_name(src_path), stream_name(tgt_path)
    golds = read_gold_file(args.gold, args.gold_format) if args.gold is not None else None
    # Both sides are files: every count is known now, so a mismatch fails before any output.
    if isinstance(src, list) and isinstance(tgt, list):
        if len(src) != len(tgt):
            raise VarattnError(f"sentence counts differ: {src_name} has {len(src)} lines but {tgt_name} has "
                               f"{len(tgt)} lines")
        if golds is not None and len(golds) != len(src):
            raise VarattnError(f"sentence counts differ: {args.gold} has {len(golds)} gold alignments but "
                               f"{src_name} and {tgt_name} have {len(src)} lines")
    hyps, sizes = _write_alignments(args, trained, src, tgt, src_name, tgt_name, golds is not None)
    if golds is not None:
        if len(golds) != len(hyps):
            raise VarattnError(f"sentence counts differ: {args.gold} has {len(golds)} gold alignments but the input "
                               f"had {len(hyps)} sentence pairs")
        check_gold_sizes(golds, sizes, args.gold, args.gold_format)
        result = alignment_error_rate(hyps, golds)
        result.update({"sentences": len(hyps), "method": args.method})
        print(json.dumps(result), file=sys.stderr if writes_to_stdout(args.output) else sys.stdout)
    return 0


def _write_alignments(args, trained, src, tgt, src_name: str, tgt_name: str,
                      keep: bool) -> tuple[list[set[Link]], list[tuple[int, int]]]:
    """Align in batches, writing and flushing each batch's lines; returns the links and the word counts of
    every pair if ``keep``."""
    from varattn.nmt.align import format_pharaoh
    from varattn.nmt.posterior import matrix_rows

    hyps: list[set[Link]] = []
    sizes: list[tuple[int, int]] = []
    unknown = UnknownTokens()
    with output_stream(args.output) as out:
        done = 0
        for chunk in chunks(paired(src, tgt, src_name, tgt_name), args.batch_size):
            results = trained.align([s for s, _ in chunk], [t for _, t in chunk], method=args.method,
                                    threshold=args.threshold, batch_size=args.batch_size)
            for res in results:
                src_unknown = unknown.add("source", trained.unknown(res["src_pieces"], "src"), len(res["src_pieces"]),
                                          done + 1)
                tgt_unknown = unknown.add("target", trained.unknown(res["tgt_pieces"], "tgt"), len(res["tgt_pieces"]),
                                          done + 1)
                if keep:
                    hyps.append(res["links"])
                    sizes.append((len(res["src_words"]), len(res["tgt_words"])))
                if args.json:
                    record = {
                        "index": done,
                        "method": args.method,
                        "links": format_pharaoh(res["links"]),
                        "src_words": res["src_words"],
                        "tgt_words": res["tgt_words"],
                        "src_tokens": res["src_pieces"],
                        "tgt_tokens": res["tgt_pieces"],
                        "matrix": matrix_rows(res["matrix"]),
                        "src_unknown": src_unknown,
                        "tgt_unknown": tgt_unknown,
                    }
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    out.write(format_pharaoh(res["links"]) + "\n")
                done += 1
            out.flush()
    unknown.report()
    return hyps, sizes


def register(sub) -> None:
    p = sub.add_parser(
        "align",
        help="word alignments of sentence pairs (Pharaoh links) and alignment error rate",
        description="Write one line of 0-based Pharaoh links (src-tgt, sorted) per sentence pair. With --gold, "
        "print {\"aer\", \"precision\", \"recall\"} as JSON: to stderr when the links go to stdout, to stdout "
        "when they go to --output FILE.",
    )
    add_run_arguments(p)
    add_corpus_arguments(p, stdin=True)
    p.add_argument("--method", choices=["prior", "posterior", "exact"], default="exact",
                   help="prior p(z|x,y<t), posterior q(z|x,y) (models with an inference network), or the exact "
                   "posterior p(z|x,y<=t) (default)")
    p.add_argument("--threshold", type=float, metavar="P",
                   help="link every piece pair with probability > P (default: each target piece to its argmax)")
    p.add_argument("--json", action="store_true", help="one JSON object per pair: links, tokens, matrix")
    p.add_argument("--gold", metavar="FILE", help="gold alignments, one line per pair: report AER")
    p.add_argument("--gold-format", choices=["talp", "pharaoh"],
                   help="format of --gold: talp is 1-based, pharaoh 0-based (required with --gold)")
    p.add_argument("--output", "-o", metavar="FILE", help="write the links here instead of stdout")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=run)
