"""Opening a trained run of any registered task: the one copy of what every task's loader did.

:func:`load_trained` reads ``run.json`` (of the task's kind), checks the config, the model sizes, the
objective and every recorded run file, then hands :class:`RunParts` to the task's ``open_run``, which
reads its vocabularies, builds its model and calls ``parts.load_weights(model)`` (the checkpoint's weights,
checked, moved to the device, evaluation mode). Nothing is ever unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from varattn.checkpoint import load_weights
from varattn.device import resolve_device
from varattn.latent import Objective, make_objective
from varattn.training.run_info import check_files, parse_section, read_run_info


@dataclass
class RunParts:
    """What a task's ``open_run`` gets: the checked pieces of a run directory.

    Attributes:
        run_dir: the run directory.
        info: its ``run.json``.
        config: the training configuration (the task's config class).
        model: the ``"model"`` section, checked by the task's ``model_config`` (model sizes).
        objective: the training mode's objective, with the config's options.
        checkpoint: ``best`` or ``last``: the weights :meth:`load_weights` reads.
        device: where the model runs.
    """

    run_dir: Path
    info: dict[str, Any]
    config: Any
    model: Any
    objective: Objective
    checkpoint: str
    device: torch.device

    def load_weights(self, model: nn.Module) -> dict:
        """Load the checkpoint's weights into ``model``, move it to the device in evaluation mode; its metadata."""
        meta = load_weights(model, self.run_dir / self.checkpoint)
        model.to(self.device).eval()
        return meta



@dataclass
class TrainedRun:
    """What every task's trained run has; ``varattn.load(run_dir)`` returns a task's subclass.

    Attributes:
        run_dir: the directory it came from.
        config: the training configuration.
        model: the network, in evaluation mode.
        objective: the training mode's objective (its ``score`` gives the exact figures).
        meta: the checkpoint's metadata (step, validation figures).
    """

    run_dir: Path
    config: Any
    model: nn.Module
    objective: Objective
    meta: dict

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_trained(spec, run_dir: str | Path, checkpoint: str = "best", device: str | None = "auto"):
    """Open ``RUN_DIR/{best,last}`` of the task ``spec`` (a ``TaskSpec``) onto ``device``.

    ``device``: ``auto`` (a CUDA GPU if there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:N``. A run of
    another task, a changed run file or a corrupted ``run.json`` is a one-line error naming it.
    """
    target = resolve_device(device)
    run_dir = Path(run_dir)
    info = read_run_info(run_dir, spec.name)
    cfg = parse_section(run_dir, "config", lambda: spec.config.from_dict(info["config"]))
    sizes = info.get("model")
    if spec.model_config is not None:
        sizes = parse_section(run_dir, "model", lambda: spec.model_config(info["model"]))
    objective = parse_section(run_dir, "config", lambda: make_objective(cfg.mode, **getattr(cfg, "objective", {})))
    check_files(run_dir, info)
    return spec.open_run(RunParts(run_dir, info, cfg, sizes, objective, checkpoint, target))


__all__ = ["RunParts", "TrainedRun", "load_trained"]
