"""``metrics.jsonl`` (one JSON record per line) and its TensorBoard mirror, alignment heatmaps included."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from varattn.errors import VarattnError
from varattn.extras import summary_writer
from varattn.training.task import Heatmap

log = logging.getLogger("varattn")

METRICS_FILE = "metrics.jsonl"
#: pixels per alignment cell in TensorBoard heatmap images
CELL_PIXELS = 8


def heatmap_image(heatmap: Heatmap) -> np.ndarray:
    """``(H, W)`` float image in [0, 1], dark = probable: the prior, and the posterior to its right.

    Each alignment cell is ``CELL_PIXELS`` pixels square; a white column separates the panels.
    """
    panels = [heatmap.prior] if heatmap.posterior is None else [heatmap.prior, heatmap.posterior]
    rows = []
    for k, panel in enumerate(panels):
        if k:
            rows.append(np.ones((panel.shape[0], 1)))
        rows.append(1.0 - np.clip(np.asarray(panel, dtype=np.float64), 0.0, 1.0))  # (T, S)
    image = np.concatenate(rows, axis=1)  # (T, S or 2S + 1)
    return np.kron(image, np.ones((CELL_PIXELS, CELL_PIXELS)))  # (T * CELL, W * CELL)


class MetricsLog:
    """Appends records to ``metrics.jsonl`` and mirrors numbers (and heatmaps) to TensorBoard.

    With ``tensorboard=True`` but the ``tensorboard`` package missing, says so once and writes only
    ``metrics.jsonl``. ``purge_step`` drops events a crashed run logged after its last resume/ save.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, purge_step: int | None = None, enabled: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled  # False on data-parallel ranks other than 0: nothing is written
        self.writer = None
        if tensorboard and enabled:
            try:
                self.writer = summary_writer(Path(run_dir) / "tb", purge_step=purge_step)
            except VarattnError as exc:  # the tensorboard extra is not installed
                log.warning("%s; metrics go to %s only (--no-tensorboard silences this)", exc, METRICS_FILE)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                scalar = isinstance(value, (int, float)) and not isinstance(value, bool)  # not epoch_end
                if scalar and key not in ("step", "epoch") and math.isfinite(value):
                    self.writer.add_scalar(f"{record['split']}/{key}", value, record["step"])
            self.writer.flush()

    def heatmaps(self, heatmaps: list[Heatmap], step: int) -> None:
        """One grayscale image per heatmap name (``alignment/NAME``): prior | posterior, dark = probable."""
        if self.writer is None:
            return
        for heatmap in heatmaps:
            self.writer.add_image(f"alignment/{heatmap.name}", heatmap_image(heatmap), step, dataformats="HW")
        self.writer.flush()

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def cut_metrics(run_dir: Path, keep: int | None) -> None:
    """Drop the records a crashed run wrote after the state being resumed was saved (``keep`` bytes)."""
    path = Path(run_dir) / METRICS_FILE
    if keep is None or not path.exists():
        return
    size = path.stat().st_size
    if size > keep:
        with open(path, "rb") as f:
            f.seek(keep)
            dropped = f.read().count(b"\n")
        with open(path, "r+b") as f:
            f.truncate(keep)
        log.info("%s: dropped %d record(s) written after the last save", METRICS_FILE, dropped)
    elif size < keep:
        log.warning("%s is shorter than when resume/ was saved; records may be missing", METRICS_FILE)
