"""Alignment heatmaps of a translation model, written to PNG files (``varattn plot``).

matplotlib (the ``plot`` extra) is imported by the first plot, through :func:`varattn.plot.pyplot`,
which selects the non-interactive ``Agg`` backend; each figure is saved and closed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from varattn.errors import VarattnError
from varattn.nmt.align import as_2d_array
from varattn.plot import pyplot, save_png

_MAX_LABEL_CHARS = 18


def _label(token: str) -> str:
    """Make a token safe and short enough for a tick label ("$" would start mathtext)."""
    token = str(token)
    if len(token) > _MAX_LABEL_CHARS:
        token = token[: _MAX_LABEL_CHARS - 1] + "\u2026"
    return token.replace("$", r"\$")


def plot_alignments(
    matrices: Mapping[str, Any],
    src_tokens: Sequence[str],
    tgt_tokens: Sequence[str],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Save side-by-side alignment heatmaps (one panel per entry of ``matrices``) as a PNG.

    ``matrices`` maps a panel name (e.g. ``"prior"``, ``"posterior"``, ``"exact posterior"``) to a
    ``(T, S)`` matrix of p(z = i | target position t) (tensor, array or nested list), with
    ``T = len(tgt_tokens)`` and ``S = len(src_tokens)``.  Target tokens run down the y axis,
    source tokens along the x axis; all panels share one 0..1 colour scale and one colour bar.
    Returns the path written.  Raises :class:`VarattnError` for no matrices or a shape mismatch.
    """
    if not matrices:
        raise VarattnError("plot_alignments needs at least one matrix")
    n_src, n_tgt = len(src_tokens), len(tgt_tokens)
    arrays: dict[str, np.ndarray] = {}
    for name, m in matrices.items():
        arr = as_2d_array(m)
        if arr.shape != (n_tgt, n_src):
            raise VarattnError(
                f"matrix {name!r} has shape {arr.shape}, expected (T, S) = ({n_tgt}, {n_src}) "
                "from the target and source tokens"
            )
        arrays[str(name)] = arr

    n = len(arrays)
    longest = max((len(_label(t)) for t in [*src_tokens, *tgt_tokens]), default=1)
    fontsize = 9 if max(n_src, n_tgt) <= 20 else 7 if max(n_src, n_tgt) <= 40 else 5
    cell = 0.26 if fontsize >= 7 else 0.18  # inches per token
    label_room = 0.4 + 0.008 * fontsize * longest  # a character is about 0.6 em wide
    panel_w = max(2.0, cell * n_src)
    panel_h = max(2.0, cell * n_tgt)
    fig_w = n * (panel_w + label_room) + 1.2
    fig_h = panel_h + label_room + (0.6 if title else 0.3)

    plt = pyplot()
    fig, axes = plt.subplots(1, n, figsize=(fig_w, fig_h), squeeze=False, layout="constrained")
    try:
        image = None
        for ax, (name, arr) in zip(axes[0], arrays.items()):
            image = ax.imshow(arr, vmin=0.0, vmax=1.0, cmap="Greys", aspect="equal", interpolation="nearest")
            ax.set_title(name, fontsize=fontsize + 2)
            ax.set_xticks(range(n_src))
            ax.set_xticklabels([_label(t) for t in src_tokens], rotation=90, fontsize=fontsize)
            ax.set_yticks(range(n_tgt))
            ax.set_yticklabels([_label(t) for t in tgt_tokens], fontsize=fontsize)
            ax.set_xlabel("source", fontsize=fontsize + 1)
            ax.set_ylabel("target", fontsize=fontsize + 1)
            ax.tick_params(length=2)
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="p(z | target position)")
        if title:
            fig.suptitle(title, fontsize=fontsize + 3)
        out = save_png(fig, path)
    finally:
        plt.close(fig)
    return out
