"""Train the VQA model on the training core: ``varattn.training`` with ``VQATask``."""

from __future__ import annotations

from pathlib import Path

from varattn import training
from varattn.vqa.config import VQAConfig
from varattn.vqa.task import VQATask


def trainer(cfg: VQAConfig, run_dir: str | Path, resume: bool = False, progress: bool | None = None,
            tensorboard: bool = True) -> training.Trainer:
    """A :class:`varattn.training.Trainer` for a fresh run of ``cfg`` in ``run_dir``, or for continuing it."""
    start = training.resume if resume else training.start
    return start(VQATask(cfg), cfg, run_dir, progress=progress, tensorboard=tensorboard)


def train(cfg: VQAConfig, run_dir: str | Path, resume: bool = False, progress: bool | None = None,
          tensorboard: bool = True) -> dict:
    """Train per ``cfg`` into ``run_dir`` (or continue it with ``resume``); returns the last validation record."""
    return trainer(cfg, run_dir, resume, progress, tensorboard).train()
