"""Plots every task shares: training curves from ``metrics.jsonl``, and matplotlib made ready for them.

The tasks' own pictures build on :func:`pyplot` and :func:`save_png` (NMT's alignment heatmaps are
:mod:`varattn.nmt.plot`). matplotlib is an optional extra (``pip install 'varattn[plot]'``): it is
imported by the first plot, not by importing this module (``read_metrics`` works without it), and a
missing matplotlib is a one-line :class:`VarattnError`.  The first plot selects matplotlib's
non-interactive ``Agg`` backend, so plots work on machines without a display (training servers,
CI).  Every function saves its figure and closes it, so repeated calls do not accumulate open
figures.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from varattn.errors import VarattnError
from varattn.extras import optional_import

log = logging.getLogger("varattn")

DPI = 120
_X_KEYS = ("step", "epoch")


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the ``Agg`` backend; a one-line VarattnError if matplotlib is missing."""
    matplotlib = optional_import("matplotlib", "plot", "plotting")
    matplotlib.use("Agg")  # a no-op once selected; must come before pyplot's first import
    return importlib.import_module("matplotlib.pyplot")


def save_png(fig, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its folder created); a path that cannot be written is one line."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=DPI, format="png")
    except OSError as exc:
        raise VarattnError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_metrics(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Save training curves from metrics records as a PNG, one small panel per metric.

    Each record is a dict such as ``{"step": 10, "split": "train", "loss": 3.2, "ppl": 20.1}``;
    validation records have ``"split": "valid"``.  Every key with a finite numeric value other
    than ``step`` / ``epoch`` gets a panel, in order of first appearance, with one line per
    split.  The x axis is ``step`` if any record has one, else ``epoch``, else the record index.
    Keys containing ``"ppl"`` use a log-scale y axis (when all their values are positive).
    Non-numeric values and ``None`` are skipped.  Returns the path written.  Raises
    :class:`VarattnError` if there are no records or nothing numeric to plot.
    """
    if not records:
        raise VarattnError("no metrics records to plot")
    x_key = next((k for k in _X_KEYS if any(_is_number(r.get(k)) for r in records)), None)

    # series[key][split] = ([x...], [y...])
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for index, rec in enumerate(records):
        if x_key is None:
            x = float(index)
        elif _is_number(rec.get(x_key)):
            x = float(rec[x_key])
        else:
            continue
        split = str(rec.get("split", "all"))
        for key, value in rec.items():
            if key in _X_KEYS or not _is_number(value):
                continue
            xs, ys = series.setdefault(str(key), {}).setdefault(split, ([], []))
            xs.append(x)
            ys.append(float(value))
    if not series:
        raise VarattnError("metrics records contain no numeric values to plot")

    n = len(series)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    plt = pyplot()
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.0 * ncols, 2.8 * nrows), squeeze=False, layout="constrained"
    )
    try:
        flat = list(axes.flat)
        for ax, (key, by_split) in zip(flat, series.items()):
            for split, (xs, ys) in by_split.items():
                marker = "o" if len(xs) <= 30 else None
                ax.plot(xs, ys, label=split, marker=marker, markersize=3, linewidth=1.2)
            values = [y for _, ys in by_split.values() for y in ys]
            if "ppl" in key and all(v > 0 for v in values):
                ax.set_yscale("log")
            ax.set_title(key, fontsize=10)
            ax.set_xlabel(x_key or "record", fontsize=8)
            ax.tick_params(which="both", labelsize=8)
            ax.grid(True, alpha=0.3)
            if len(by_split) > 1 or "all" not in by_split:
                ax.legend(fontsize=7)
        for ax in flat[n:]:
            ax.set_visible(False)
        out = save_png(fig, path)
    finally:
        plt.close(fig)
    return out


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON-lines metrics file into a list of dicts (one per non-blank line).

    A last line that is not a complete JSON object (a crash while writing can leave one) is
    skipped with a logged warning (the ``varattn`` logger).  A bad line anywhere else raises
    :class:`VarattnError` naming the file and the 1-based line number; so does a missing file.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise VarattnError(f"cannot read metrics file {os.fspath(path)}: {exc}") from exc
    numbered = [(k, line) for k, line in enumerate(lines, start=1) if line.strip()]
    records: list[dict[str, Any]] = []
    for pos, (lineno, line) in enumerate(numbered):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            if pos == len(numbered) - 1:
                log.warning("%s:%d: skipping the truncated last line (%s)", os.fspath(path), lineno, exc)
                break
            raise VarattnError(f"{os.fspath(path)}:{lineno}: corrupted metrics line: {exc}") from exc
        records.append(rec)
    return records
