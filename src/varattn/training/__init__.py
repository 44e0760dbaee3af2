"""The task-agnostic training core: loop, optimizer and schedule, resume, checkpoints, metrics.

A task (``varattn.nmt``, ``varattn.vqa``) implements :class:`Task` and extends
:class:`TrainingConfig`; :func:`start` (a fresh run) or :func:`resume` (a stopped one) returns a
:class:`Trainer`, whose ``train()`` runs the loop.
"""

from varattn.training.config import TrainingConfig
from varattn.training.loop import RUN_FILE, Trainer, resume, start
from varattn.training.metrics import METRICS_FILE
from varattn.training.optim import make_optimizer
from varattn.training.state import RESUME_DIR, TrainerState
from varattn.training.stop import TrainingStopped
from varattn.training.task import BatchLoss, Heatmap, Task, Validation

__all__ = [
    "METRICS_FILE", "RESUME_DIR", "RUN_FILE", "BatchLoss", "Heatmap", "Task", "Trainer", "TrainerState",
    "TrainingConfig", "TrainingStopped", "Validation", "make_optimizer", "resume", "start",
]
