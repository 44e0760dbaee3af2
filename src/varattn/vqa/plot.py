"""Pictures of where a VQA model looks: the image with the prior, q and the exact posterior over its regions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from varattn.errors import VarattnError
from varattn.extras import optional_import


def _heat(probs: np.ndarray, grid: tuple[int, int] | None, boxes: np.ndarray | None,
          size: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` map of region probabilities: grid cells, or the sum over boxes covering each pixel."""
    h, w = size
    if grid is not None:
        cells = probs.reshape(grid)
        return np.kron(cells, np.ones((h // grid[0] + 1, w // grid[1] + 1)))[:h, :w] if h and w else cells
    out = np.zeros((h, w))
    for p, (x1, y1, x2, y2) in zip(probs, boxes):
        out[max(0, int(y1)) : max(0, int(y2)) + 1, max(0, int(x1)) : max(0, int(x2)) + 1] += p
    return out


def plot_regions(regions, path: str | os.PathLike[str], image=None, question: str = "") -> Path:
    """Draw ``image`` three times (prior, q, exact posterior; q only where the mode has one) with the
    region probabilities of ``regions`` (a ``varattn.vqa.run.Regions``) laid over it; also bars per region.

    ``image``: a path, PIL image or uint8 array; without one (region features without the picture)
    only the bars are drawn.
    """
    matplotlib = optional_import("matplotlib", "plot", "plotting")
    optional_import("PIL", "vqa", "reading images")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from PIL import Image

    pixels = None
    if image is not None:
        if isinstance(image, (str, Path)):
            try:
                with Image.open(image) as im:
                    image = im.convert("RGB")
            except (OSError, ValueError) as exc:
                raise VarattnError(f"cannot read the image {image}: {exc}") from None
        pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    panels = [("prior p(z | x, q)", regions.prior)]
    if regions.posterior is not None:
        panels.append((f"inference network q(z | x, q, a={regions.answer})", regions.posterior))
    panels.append((f"exact posterior p(z | x, q, a={regions.answer})", regions.exact))
    draw_image = pixels is not None and (regions.grid is not None or regions.boxes is not None)
    rows = 2 if draw_image else 1
    fig, axes = plt.subplots(rows, len(panels), figsize=(4 * len(panels), 3.6 * rows), squeeze=False)
    for col, (title, probs) in enumerate(panels):
        if draw_image:
            ax = axes[0, col]
            ax.imshow(pixels)
            if regions.grid is not None:
                heat = _heat(probs, regions.grid, None, pixels.shape[:2])
            else:
                heat = _heat(probs, None, regions.boxes, pixels.shape[:2])
            ax.imshow(heat, cmap="magma", alpha=0.55, vmin=0.0, vmax=max(float(heat.max()), 1e-9))  # bright: likely
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        bar = axes[rows - 1, col]
        bar.bar(np.arange(len(probs)), probs, color="tab:purple")
        bar.set_xlabel("region")
        bar.xaxis.set_major_locator(MaxNLocator(integer=True))  # regions are numbered: no 2.5
        bar.set_ylim(0, min(1.0, 1.15 * max(float(np.max(p)) for _, p in panels)))
        bar.axhline(1.0 / len(probs), color="gray", lw=0.8, ls="--")  # uniform over the regions
        if not draw_image:
            bar.set_title(title, fontsize=9)
    if question:
        fig.suptitle(question, fontsize=11)
    fig.tight_layout()
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    except OSError as exc:
        raise VarattnError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out
