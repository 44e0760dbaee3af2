"""``varattn plot-metrics``: training curves from ``RUN_DIR/metrics.jsonl``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from varattn.errors import VarattnError


def register(sub) -> None:
    p = sub.add_parser("plot-metrics", help="training curves from RUN_DIR/metrics.jsonl")
    p.add_argument("run_dir", help="run directory (or a metrics.jsonl file)")
    p.add_argument("--keys", nargs="+", metavar="KEY", help="plot only these metrics (default: every numeric one)")
    p.add_argument("--output", "-o", required=True, metavar="FILE.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
