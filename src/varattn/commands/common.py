"""Flags and set-up shared by the subcommands that open a trained run."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")


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


def chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive lists of ``size`` items (the last may be shorter), read lazily: streams stay streams."""
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
