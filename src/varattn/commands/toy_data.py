"""``varattn toy-data``: write the synthetic corpus (train/valid/test .src .tgt .align)."""

from __future__ import annotations

import argparse

#: default split sizes: train, valid, test
DEFAULT_SIZES = (6000, 300, 300)


def register(sub) -> None:
    p = sub.add_parser("toy-data", help="write the synthetic corpus (train/valid/test .src .tgt .align)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", type=int, nargs=3, metavar=("TRAIN", "VALID", "TEST"),
                   help=f"pairs per split (default {' '.join(map(str, DEFAULT_SIZES))})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from varattn.nmt.corpora.synthetic import make_splits, write_splits

    n_train, n_valid, n_test = args.sizes or DEFAULT_SIZES
    splits = make_splits(seed=args.seed, n_train=n_train, n_valid=n_valid, n_test=n_test)
    out = write_splits(args.out, splits)
    print(f"wrote the synthetic corpus to {out}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return 0
