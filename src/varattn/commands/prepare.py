"""``varattn prepare iwslt14 ARCHIVE_OR_URL OUTDIR``: the standard IWSLT'14 de-en preparation.

See ``varattn.data.iwslt14`` for the steps (fairseq's ``prepare-iwslt14.sh``: Moses tokenisation and
lowercasing, cleaning by length and ratio, the valid split from train, the test set from the dev and
tst files, joint BPE).
"""

from __future__ import annotations

import argparse
import sys


def run_iwslt14(args: argparse.Namespace) -> int:
    from varattn.data.iwslt14 import prepare

    counts = prepare(args.source, args.outdir, merges=args.merges, progress=not args.no_progress)
    print(f"wrote IWSLT'14 de-en to {args.outdir}: " + ", ".join(f"{k} {v} pairs" for k, v in counts.items()),
          file=sys.stderr)
    return 0


#: the corpora ``prepare`` knows, each with the function that prepares it
CORPORA = {"iwslt14": run_iwslt14}


def run(args: argparse.Namespace) -> int:
    return CORPORA[args.corpus](args)


def register(sub) -> None:
    from varattn.data.iwslt14 import DEFAULT_URL

    p = sub.add_parser("prepare", help="prepare a standard corpus (iwslt14)",
                       description="Download or read a corpus archive and prepare it as the paper did.")
    p.set_defaults(func=run)
    corpora = p.add_subparsers(dest="corpus", required=True)
    q = corpora.add_parser(
        "iwslt14", help="IWSLT'14 German-English as fairseq's prepare-iwslt14.sh (joint BPE, 14,000 merges)",
        description="Prepare IWSLT'14 de-en: Moses tokenisation and lowercasing (sacremoses), cleaning by length "
        "(1-175 words) and ratio (1.5), every 23rd training pair as validation, the test set from the dev2010, "
        "TEDX.dev2012 and tst2010-2012 files, joint BPE (subword-nmt). Writes {train,valid,test}.{de,en} and "
        f"their .bpe versions, and bpe.codes. The usual archive: {DEFAULT_URL}")
    q.add_argument("source", metavar="ARCHIVE_OR_URL", help="the de-en.tgz archive, or a URL to download it from")
    q.add_argument("outdir", metavar="OUTDIR", help="output directory (must not exist or be empty)")
    q.add_argument("--merges", type=int, default=14000, help="BPE merge operations (default 14000, the paper's)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
