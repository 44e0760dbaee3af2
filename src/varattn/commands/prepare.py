"""``varattn prepare CORPUS``: standard corpora, prepared the way the field does.

- ``varattn prepare iwslt14 ARCHIVE_OR_URL [OUTDIR]`` (default ``data/iwslt14``): see
  ``varattn.nmt.corpora.iwslt14`` for the steps (fairseq's ``prepare-iwslt14.sh``: Moses tokenisation and
  lowercasing, cleaning by length and ratio, the valid split from train, the test set from the dev and
  tst files, joint BPE).
- ``varattn prepare multi30k [OUTDIR] [--from PATH]`` (default ``data/multi30k``): the official
  tokenised task-1 files, downloaded or from a local copy (``varattn.nmt.corpora.multi30k``).
"""

from __future__ import annotations

import argparse
import sys


def run_iwslt14(args: argparse.Namespace) -> int:
    from varattn.nmt.corpora.iwslt14 import prepare

    counts = prepare(args.source, args.outdir, merges=args.merges, progress=not args.no_progress)
    print(f"wrote IWSLT'14 de-en to {args.outdir}: " + ", ".join(f"{k} {v} pairs" for k, v in counts.items()),
          file=sys.stderr)
    return 0


def run_multi30k(args: argparse.Namespace) -> int:
    from varattn.nmt.corpora.multi30k import OFFICIAL_PAIRS, SUBDIR, prepare

    counts = prepare(args.outdir, source=args.source, url=args.url, progress=not args.no_progress)
    where = "/".join([args.outdir.rstrip("/"), *SUBDIR])
    print(f"wrote Multi30k task 1 de-en to {where}: " + ", ".join(f"{k} {v} pairs" for k, v in counts.items()),
          file=sys.stderr)
    if counts != OFFICIAL_PAIRS:
        print("note: the official release has " + ", ".join(f"{k} {v}" for k, v in OFFICIAL_PAIRS.items()),
              file=sys.stderr)
    return 0


#: the corpora ``prepare`` knows, each with the function that prepares it
CORPORA = {"iwslt14": run_iwslt14, "multi30k": run_multi30k}


def run(args: argparse.Namespace) -> int:
    return CORPORA[args.corpus](args)


def register(sub) -> None:
    from varattn.nmt.corpora import multi30k
    from varattn.nmt.corpora.iwslt14 import DEFAULT_URL

    p = sub.add_parser("prepare", help="prepare a standard corpus (iwslt14, multi30k)",
                       description="Download or read a standard corpus and prepare it as the paper and the field do.")
    p.set_defaults(func=run)
    corpora = p.add_subparsers(dest="corpus", required=True)
    q = corpora.add_parser(
        "iwslt14", help="IWSLT'14 German-English as fairseq's prepare-iwslt14.sh (joint BPE, 14,000 merges)",
        description="Prepare IWSLT'14 de-en: Moses tokenisation and lowercasing (sacremoses), cleaning by length "
        "(1-175 words) and ratio (1.5), every 23rd training pair as validation, the test set from the dev2010, "
        "TEDX.dev2012 and tst2010-2012 files, joint BPE (subword-nmt). Writes {train,valid,test}.{de,en} and "
        f"their .bpe versions, and bpe.codes. The usual archive: {DEFAULT_URL}")
    q.add_argument("source", metavar="ARCHIVE_OR_URL", help="the de-en.tgz archive, or a URL to download it from")
    q.add_argument("outdir", metavar="OUTDIR", nargs="?", default="data/iwslt14",
                   help="output directory (must not exist or be empty; default data/iwslt14)")
    q.add_argument("--merges", type=int, default=14000, help="BPE merge operations (default 14000, the paper's)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")

    m = corpora.add_parser(
        "multi30k", help="Multi30k task 1 German-English: the official lowercased, tokenised files",
        description="Get Multi30k task 1 de-en as the field uses it: the dataset repository's lowercased, "
        "punctuation-normalised, Moses-tokenised files {train,val,test_2016_flickr,test_2017_flickr}"
        ".lc.norm.tok.{de,en}, checked (both sides of a split line-aligned) and written unchanged to "
        f"OUTDIR/task1/tok. Downloaded from {multi30k.DEFAULT_URL}/<file>, or read from a local copy (--from).")
    m.add_argument("outdir", metavar="OUTDIR", nargs="?", default=multi30k.DEFAULT_OUTDIR,
                   help=f"output directory (must not exist or be empty; default {multi30k.DEFAULT_OUTDIR})")
    source = m.add_mutually_exclusive_group()
    source.add_argument("--from", dest="source", metavar="PATH",
                        help="a local copy instead of downloading: a directory holding the files (directly, under "
                        "task1/tok, or under data/task1/tok as in a clone of the repository) or a .tar.gz/.zip "
                        "archive of them")
    source.add_argument("--url", default=multi30k.DEFAULT_URL,
                        help="download each file from URL/<file name> (default: the dataset repository's "
                        "data/task1/tok)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
