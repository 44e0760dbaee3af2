"""``varattn plot``: heatmaps of the prior, posterior and exact posterior for one sentence pair."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from varattn.commands.common import UnknownTokens, add_run_arguments, open_run
from varattn.errors import VarattnError


def register(sub) -> None:
    p = sub.add_parser("plot", help="heatmaps of the prior, posterior and exact posterior for one sentence pair")
    add_run_arguments(p)
    p.add_argument("--src", required=True, metavar="TEXT", help="source sentence")
    p.add_argument("--tgt", required=True, metavar="TEXT", help="target sentence")
    p.add_argument("--output", "-o", required=True, metavar="FILE.png")
    p.add_argument("--title", help="figure title (default: the mode and run name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from varattn.nmt.plot import plot_alignments
    from varattn.nmt.posterior import METHOD_TITLES, alignment_matrices, has_posterior

    trained = open_run(args)
    src_tokens = trained.src_seg.tokenize(args.src)
    tgt_tokens = trained.tgt_seg.tokenize(args.tgt)
    if not src_tokens or not tgt_tokens:
        raise VarattnError("plot needs a non-empty source and target sentence")
    unknown = UnknownTokens()
    unknown.add("source", trained.unknown(src_tokens, "src"), len(src_tokens), 1)
    unknown.add("target", trained.unknown(tgt_tokens, "tgt"), len(tgt_tokens), 1)
    unknown.report()
    methods = ["prior", "posterior", "exact"] if has_posterior(trained) else ["prior", "exact"]
    mats = alignment_matrices(trained, [args.src], [args.tgt], methods)[0]
    title = args.title if args.title is not None else f"{trained.mode} ({Path(args.run_dir).name})"
    out = plot_alignments({METHOD_TITLES[m]: mats[m] for m in methods}, src_tokens, tgt_tokens, args.output, title)
    print(f"wrote {out}", file=sys.stderr)
    return 0
