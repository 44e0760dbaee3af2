"""Flags and set-up shared by the subcommands that open a trained run."""

from __future__ import annotations

import argparse


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """``RUN_DIR``, ``--checkpoint best|last`` and ``--device``."""
    p.add_argument("run_dir", help="run directory written by varattn train")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU if there is one, else the CPU), cpu, cuda or cuda:N (default auto)")


def open_run(args: argparse.Namespace):
    """The ``TrainedModel`` that ``add_run_arguments``' flags name."""
    from varattn.nmt.run import load_run

    return load_run(args.run_dir, args.checkpoint, args.device)
