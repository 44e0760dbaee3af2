"""Optional dependencies (pip extras), imported only when a feature needs them.

TensorBoard, matplotlib, the easy-VQA packages and the web server of ``varattn serve`` are extras of the package
(``pip install 'varattn[tensorboard]'``, ``[plot]``, ``[vqa]``, ``[serve]`` or ``[all]``), so nothing imports
them at module level.  :func:`optional_import` imports one when it is needed and, when it is not
installed, raises a one-line :class:`VarattnError` naming the extra to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from varattn.errors import VarattnError

# extra name -> the distributions it installs (keep in step with pyproject.toml)
EXTRAS = {
    "tensorboard": ("tensorboard",),
    "plot": ("matplotlib",),
    "vqa": ("easy-vqa", "pillow", "h5py"),
    "serve": ("starlette", "uvicorn", "python-multipart", "pillow"),
}


def optional_import(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"matplotlib"``), which the pip extra ``extra`` installs.

    ``purpose`` says what needs it (``"plotting"``) for the error message.  Raises
    :class:`VarattnError` (one line) when the module's top-level package is not installed; any
    other import failure (a broken installation, a missing dependency of the package itself) is
    re-raised unchanged, since installing the extra would not fix it.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name not in (module, top):
            raise
        raise VarattnError(
            f"{purpose} needs {top}, which is not installed: pip install 'varattn[{extra}]'"
            f" (or: pip install {' '.join(EXTRAS[extra])})"
        ) from exc


def summary_writer(log_dir: str | Path, purge_step: int | None = None) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` writing to ``log_dir``.

    ``purge_step`` drops events a crashed run logged at or after that step (pass it on resume).
    Raises :class:`VarattnError` (one line, naming the ``tensorboard`` extra) when TensorBoard
    is not installed.
    """
    optional_import("tensorboard", "tensorboard", "TensorBoard logging")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir), purge_step=purge_step)
