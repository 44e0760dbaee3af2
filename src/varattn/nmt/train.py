"""Train the NMT model on the training core: ``varattn.training`` with ``NMTTask``."""

from __future__ import annotations

from pathlib import Path

from varattn import training
from varattn.nmt.config import TrainConfig
from varattn.nmt.task import NMTTask


def trainer(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool | None = None,
            tensorboard: bool = True) -> training.Trainer:
    """A :class:`varattn.training.Trainer` for a fresh run of ``cfg`` in ``run_dir``, or for continuing it."""
    start = training.resume if resume else training.start
    return start(NMTTask(cfg), cfg, run_dir, progress=progress, tensorboard=tensorboard)


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool | None = None,
          tensorboard: bool = True) -> dict:
    """Train per ``cfg`` into ``run_dir`` (or continue it with ``resume``); returns the last validation record."""
    return trainer(cfg, run_dir, resume, progress, tensorboard).train()
