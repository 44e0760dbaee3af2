"""``varattn align`` (word alignments and AER), ``varattn plot`` and ``varattn plot-metrics``.

``align`` writes exactly one line per input sentence pair, in order, flushing after every
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
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from varattn.commands.common import add_run_arguments, chunks, open_run
from varattn.errors import VarattnError

JSON_DECIMALS = 5


def _rows(matrix) -> list[list[float]]:
    return [[round(float(v), JSON_DECIMALS) for v in row] for row in matrix.tolist()]


def _input_lines(path: str) -> list[str] | Iterator[str]:
    """All lines of a file, or a line iterator over stdin for ``-``."""
    from varattn.data.corpus import iter_lines, read_lines

    if path == "-":
        return iter_lines(sys.stdin, "<stdin>")
    return read_lines(path)


def _paired(src, tgt, src_name: str, tgt_name: str) -> Iterator[tuple[str, str]]:
    """Zip two line sources, failing with both line counts if they differ."""
    src_it, tgt_it = iter(src), iter(tgt)
    n = 0
    while True:
        s = next(src_it, None)
        t = next(tgt_it, None)
        if s is None and t is None:
            return
        if s is None or t is None:
            rest_s = n + (s is not None) + sum(1 for _ in src_it)
            rest_t = n + (t is not None) + sum(1 for _ in tgt_it)
            raise VarattnError(f"sentence counts differ: {src_name} has {rest_s} lines but {tgt_name} has "
                               f"{rest_t} lines")
        n += 1
        yield s, t


def _resolve_files(args, trained) -> tuple[str, str]:
    from varattn.data.corpus import resolve_pair

    if args.src is None and args.tgt is None and args.prefix is None:
        raise VarattnError("name the sentence pairs with --src FILE --tgt FILE, "
                           "or --prefix (with --src-lang/--tgt-lang)")
    if args.src == "-" and args.tgt == "-":
        raise VarattnError("only one of --src and --tgt can be read from stdin")
    cfg = trained.config
    src_lang, tgt_lang = args.src_lang or cfg.src_lang, args.tgt_lang or cfg.tgt_lang
    if args.src == "-" or args.tgt == "-":
        other = args.tgt if args.src == "-" else args.src
        lang = tgt_lang if args.src == "-" else src_lang
        if other is None:
            if args.prefix is None:
                raise VarattnError("give both --src and --tgt (or --prefix for the side not read from stdin)")
            other = f"{args.prefix}.{lang}"
        from varattn.data.corpus import read_lines

        read_lines(other)  # fail early on a missing file
        return ("-", other) if args.src == "-" else (other, "-")
    src_path, tgt_path = resolve_pair(args.prefix, src_lang, tgt_lang, args.src, args.tgt)
    return str(src_path), str(tgt_path)


def cmd_align(args: argparse.Namespace) -> int:
    from varattn.align import alignment_error_rate, read_gold_file
    from varattn.nmt.posterior import check_methods, check_threshold

    if args.batch_size < 1:
        raise VarattnError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_threshold(args.threshold)
    if args.gold is not None and args.gold_format is None:
        raise VarattnError("--gold needs --gold-format talp|pharaoh (talp files are 1-based, pharaoh 0-based)")
    if args.gold_format is not None and args.gold is None:
        raise VarattnError("--gold-format only applies with --gold FILE")
    trained = open_run(args)
    check_methods(trained, [args.method])
    src_path, tgt_path = _resolve_files(args, trained)
    src = _input_lines(src_path)
    tgt = _input_lines(tgt_path)
    src_name = "<stdin>" if src_path == "-" else src_path
    tgt_name = "<stdin>" if tgt_path == "-" else tgt_path
    golds = read_gold_file(args.gold, args.gold_format) if args.gold is not None else None
    # Both sides are files: every count is known now, so a mismatch fails before any output.
    if isinstance(src, list) and isinstance(tgt, list):
        if len(src) != len(tgt):
            raise VarattnError(f"sentence counts differ: {src_name} has {len(src)} lines but {tgt_name} has "
                               f"{len(tgt)} lines")
        if golds is not None and len(golds) != len(src):
            raise VarattnError(f"sentence counts differ: {args.gold} has {len(golds)} gold alignments but "
                               f"{src_name} and {tgt_name} have {len(src)} lines")
    to_stdout = args.output is None or args.output == "-"
    try:
        hyps = _write_alignments(args, trained, src, tgt, src_name, tgt_name, golds is not None, to_stdout)
    except BrokenPipeError:
        # the reader went away (``| head``): stop quietly, as line-oriented tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    if golds is not None:
        if len(golds) != len(hyps):
            raise VarattnError(f"sentence counts differ: {args.gold} has {len(golds)} gold alignments but the input "
                               f"had {len(hyps)} sentence pairs")
        result = alignment_error_rate(hyps, golds)
        result.update({"sentences": len(hyps), "method": args.method})
        print(json.dumps(result), file=sys.stderr if to_stdout else sys.stdout)
    return 0


def _write_alignments(args, trained, src, tgt, src_name: str, tgt_name: str, keep: bool,
                      to_stdout: bool) -> list[set[tuple[int, int]]]:
    """Align in batches, writing and flushing each batch's lines; returns the links if ``keep``."""
    from varattn.align import format_pharaoh

    hyps: list[set[tuple[int, int]]] = []
    out = sys.stdout
    try:
        if not to_stdout:
            try:
                out = open(args.output, "w", encoding="utf-8", newline="\n")
            except OSError as exc:
                raise VarattnError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        done = 0
        for chunk in chunks(_paired(src, tgt, src_name, tgt_name), args.batch_size):
            results = trained.align([s for s, _ in chunk], [t for _, t in chunk], method=args.method,
                                    threshold=args.threshold, batch_size=args.batch_size)
            for res in results:
                if keep:
                    hyps.append(res["links"])
                if args.json:
                    record = {
                        "index": done,
                        "method": args.method,
                        "links": format_pharaoh(res["links"]),
                        "src_words": res["src_words"],
                        "tgt_words": res["tgt_words"],
                        "src_tokens": res["src_pieces"],
                        "tgt_tokens": res["tgt_pieces"],
                        "matrix": _rows(res["matrix"]),
                    }
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    out.write(format_pharaoh(res["links"]) + "\n")
                done += 1
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    return hyps


PANEL_NAMES = {
    "prior": "prior p(z | x, y<t)",
    "posterior": "posterior q(z | x, y)",
    "exact": "exact posterior p(z | x, y<=t)",
}


def cmd_plot(args: argparse.Namespace) -> int:
    from varattn.nmt.posterior import alignment_matrices, has_posterior
    from varattn.plot import plot_alignments

    trained = open_run(args)
    src_tokens = trained.src_seg.tokenize(args.src)
    tgt_tokens = trained.tgt_seg.tokenize(args.tgt)
    if not src_tokens or not tgt_tokens:
        raise VarattnError("plot needs a non-empty source and target sentence")
    methods = ["prior", "posterior", "exact"] if has_posterior(trained) else ["prior", "exact"]
    mats = alignment_matrices(trained, [args.src], [args.tgt], methods)[0]
    title = args.title if args.title is not None else f"{trained.mode} ({Path(args.run_dir).name})"
    out = plot_alignments({PANEL_NAMES[m]: mats[m] for m in methods}, src_tokens, tgt_tokens, args.output, title)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_plot_metrics(args: argparse.Namespace) -> int:
    from varattn.plot import plot_metrics, read_metrics

    path = Path(args.run_dir)
    if path.is_dir():
        path = path / "metrics.jsonl"
    elif not path.exists():
        raise VarattnError(f"run directory not found: {args.run_dir}")
    records = read_metrics(path)
    if args.keys:
        present = {k for r in records for k in r}
        missing = [k for k in args.keys if k not in present]
        if missing:
            raise VarattnError(f"no metric {', '.join(missing)} in {path}; it has: {', '.join(sorted(present))}")
        keep = set(args.keys) | {"step", "epoch", "split"}
        records = [{k: v for k, v in r.items() if k in keep} for r in records]
    out = plot_metrics(records, args.output)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "align",
        help="word alignments of sentence pairs (Pharaoh links) and alignment error rate",
        description="Write one line of 0-based Pharaoh links (src-tgt, sorted) per sentence pair. With --gold, "
        "print {\"aer\", \"precision\", \"recall\"} as JSON: to stderr when the links go to stdout, to stdout "
        "when they go to --output FILE.",
    )
    add_run_arguments(p)
    p.add_argument("--prefix", help="fairseq-style prefix: reads PREFIX.SRC_LANG and PREFIX.TGT_LANG")
    p.add_argument("--src", help="source file ('-' for stdin)")
    p.add_argument("--tgt", help="target file ('-' for stdin)")
    p.add_argument("--src-lang", default=None, help="source language suffix (default: the run's)")
    p.add_argument("--tgt-lang", default=None, help="target language suffix (default: the run's)")
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
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("plot", help="heatmaps of the prior, posterior and exact posterior for one sentence pair")
    add_run_arguments(p)
    p.add_argument("--src", required=True, metavar="TEXT", help="source sentence")
    p.add_argument("--tgt", required=True, metavar="TEXT", help="target sentence")
    p.add_argument("--output", "-o", required=True, metavar="FILE.png")
    p.add_argument("--title", help="figure title (default: the mode and run name)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("plot-metrics", help="training curves from RUN_DIR/metrics.jsonl")
    p.add_argument("run_dir", help="run directory (or a metrics.jsonl file)")
    p.add_argument("--keys", nargs="+", metavar="KEY", help="plot only these metrics (default: every numeric one)")
    p.add_argument("--output", "-o", required=True, metavar="FILE.png")
    p.set_defaults(func=cmd_plot_metrics)
