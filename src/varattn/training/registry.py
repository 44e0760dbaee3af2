"""The task registry: what ``varattn train``, ``varattn evaluate`` and ``varattn.load`` know of a task.

A task (``varattn.nmt``, ``varattn.vqa``, or one of your own) registers one :class:`TaskSpec`: its
name (the ``"task"`` of ``run.json``, ``--task`` on the command line, ``task:`` in a config file), its
configuration class, the :class:`~varattn.training.task.Task` the core trains, how a trained run opens,
and how it is evaluated. The registry never imports a task: the tasks import it and register
themselves, and ``varattn.register_shipped_tasks()`` (which the CLI and ``varattn.load`` call) imports the
shipped ones.

    NMT = register_task(TaskSpec(name="nmt", config=TrainConfig, task=NMTTask, open_run=open_trained, ...))

Lookup is by name (:func:`get_task`); an unknown name is a one-line error listing the registered ones.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varattn.errors import VarattnError
from varattn.training.config import TrainingConfig, apply_override, config_data, read_config_file
from varattn.training.task import Task

#: what a task's evaluation gives the ``evaluate`` command: the figures (``--json``) and the report's lines
EvaluationReport = tuple[dict, list[str]]


@dataclass(frozen=True)
class TaskSpec:
    """One task, as the commands, ``varattn.load`` and the training core see it.

    Attributes:
        name: the task's name: ``run.json``'s ``"task"``, ``--task``, a config file's ``task:``.
        config: the configuration class (a :class:`TrainingConfig` with ``mode`` and ``objective`` keys).
        task: builds the :class:`Task` the training core trains from a configuration.
        open_run: builds a trained run from its :class:`~varattn.training.trained.RunParts` (read and checked
            by :func:`varattn.training.trained.load_trained`): its vocabularies, its model with the weights
            that ``parts.load_weights(model)`` loads. ``varattn.load`` returns what it returns.
        evaluate: ``(trained run, parsed flags) -> (figures, report lines)`` for ``varattn evaluate``.
        evaluate_flags: adds the task's own ``varattn evaluate`` flags to a parser (``None``: none).
        train_flags: adds the task's own ``varattn train`` flags; each flag's ``dest`` is a config key.
        fresh_config: ``(config, the task's train flags as given) -> None``: adjusts a fresh run's config
            after the flags (e.g. translation finds ``varattn toy-data``'s ``.src``/``.tgt`` files).
        model_config: checks the ``"model"`` section of ``run.json`` (e.g. ``ModelConfig.from_dict``); ``None``:
            the section is handed over as it is.
        title: a few words for help texts (``"translation"``).
        config_dir: where its shipped configs live (``NAME.yaml``), named without a path by ``--config``.
        default_config: the shipped config ``varattn train --task NAME`` uses without ``--config``
            (``None``: the configuration class's defaults).
        run_name: the default run directory under ``runs/``, formatted with the config's ``mode``.
        commands: the commands that read its runs, for errors that meet its run where another task's is needed.
        summary: ``(config, last validation record, run directory) -> line`` printed when training ends.
    """

    name: str
    config: type[TrainingConfig]
    task: Callable[[Any], Task]
    open_run: Callable[[Any], Any]
    evaluate: Callable[[Any, argparse.Namespace], EvaluationReport]
    evaluate_flags: Callable[[argparse.ArgumentParser], None] | None = None
    train_flags: Callable[[argparse.ArgumentParser], None] | None = None
    fresh_config: Callable[[Any, dict], None] | None = None
    model_config: Callable[[Any], Any] | None = None
    title: str = ""
    config_dir: Path | None = None
    default_config: str | None = None
    run_name: str = ""
    commands: str = ""
    summary: Callable[[Any, dict, Path], str] | None = None

    # -- configurations -----------------------------------------------------------------------------
    def shipped_configs(self) -> list[str]:
        """The names of the configs shipped with the task (``--config NAME``)."""
        return sorted(p.stem for p in self.config_dir.glob("*.yaml")) if self.config_dir else []

    def load_config(self, name: str | None = None, overrides: dict[str, Any] | None = None,
                    sets: list[str] | None = None) -> TrainingConfig:
        """A config file (a path or a shipped name; default: ``default_config``), then flags and ``key=value`` sets."""
        name = name or self.default_config
        if name is None:
            data = {k: v for k, v in (overrides or {}).items() if v is not None}
            for assignment in sets or []:
                apply_override(data, assignment)
            return self.config.from_dict(data)
        return self.config.from_dict(config_data(name, self.config_dir or Path("."), overrides, sets, task=self.name))

    @property
    def out_pattern(self) -> str:
        """The default run directory's name, ``{mode}`` standing for the mode: ``run_name``, or ``NAME-{mode}``."""
        return self.run_name or f"{self.name}-{{mode}}"

    def default_out(self, cfg: TrainingConfig) -> Path:
        """``runs/<out_pattern>`` for a config: where a run goes without ``--out``."""
        return Path("runs") / self.out_pattern.format(mode=cfg.mode)

    # -- training and trained runs --------------------------------------------------------------------
    def trainer(self, cfg: TrainingConfig, run_dir: str | Path, resume: bool = False, progress: bool | None = None,
                tensorboard: bool = True):
        """A :class:`varattn.training.Trainer` for a fresh run of ``cfg`` in ``run_dir``, or for continuing it."""
        from varattn import training

        if not isinstance(cfg, self.config):
            raise VarattnError(f"the {self.name} task trains a {self.config.__name__}, got a {type(cfg).__name__}")
        start = training.resume if resume else training.start
        return start(self.task(cfg), cfg, run_dir, progress=progress, tensorboard=tensorboard)

    def train(self, cfg: TrainingConfig, run_dir: str | Path, resume: bool = False, progress: bool | None = None,
              tensorboard: bool = True) -> dict:
        """Train per ``cfg`` into ``run_dir`` (or continue it with ``resume``); returns the last validation record."""
        return self.trainer(cfg, run_dir, resume, progress, tensorboard).train()

    def load(self, run_dir: str | Path, checkpoint: str = "best", device: str | None = "auto"):
        """Open a trained run of this task (``checkpoint``: ``best`` or ``last``) on ``device``."""
        from varattn.training.trained import load_trained

        return load_trained(self, run_dir, checkpoint, device)

    def describe(self, cfg: TrainingConfig, result: dict, run_dir: Path) -> str:
        """The line ``varattn train`` prints at the end: the task's ``summary``, or the validation metric."""
        if self.summary is not None:
            return self.summary(cfg, result, run_dir)
        figures = " | ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float))
        return f"{cfg.mode}: step {result.get('step')} | {figures} | run: {run_dir}"


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to the registry (under ``spec.name``) and return it; registering a name twice is an error."""
    held = _TASKS.get(spec.name)
    if held is not None and held is not spec:
        raise VarattnError(f"a task named {spec.name!r} is already registered")
    if not spec.name or not spec.name.replace("-", "").isalnum():
        raise VarattnError(f"a task name is letters, digits and '-', got {spec.name!r}")
    _TASKS[spec.name] = spec
    return spec


def unregister_task(name: str) -> None:
    """Remove a task from the registry (tests register and remove their own)."""
    _TASKS.pop(name, None)


def task_names() -> list[str]:
    """The registered tasks' names, sorted (registration order depends on what was imported first)."""
    return sorted(_TASKS)


def get_task(name: str, where: str = "") -> TaskSpec:
    """The registered task ``name``; a one-line error listing the registered names otherwise."""
    spec = _TASKS.get(name)
    if spec is None:
        known = ", ".join(task_names()) or "none are registered"
        raise VarattnError(f"unknown task {name!r}{where} (the tasks: {known})")
    return spec


def find_task(name: str) -> TaskSpec | None:
    """The registered task ``name``, or None."""
    return _TASKS.get(name)


def config_task(name: str) -> str | None:
    """The task a config names: a file's ``task:`` key, or the task that ships a config of that name.

    ``None`` when the file names no task (a translation config written before tasks were named) or no
    registered task ships a config of that name (the task's own loader then says so).
    """
    path = Path(name)
    if path.is_file():
        named = read_config_file(path).get("task")
        return None if named is None else str(named)
    shipping = [task for task in task_names() if name in _TASKS[task].shipped_configs()]
    if len(shipping) > 1:
        raise VarattnError(f"the tasks {', '.join(shipping)} all ship a config named {name}: choose one with --task")
    return shipping[0] if shipping else None


__all__ = ["EvaluationReport", "TaskSpec", "config_task", "find_task", "get_task", "register_task", "task_names",
           "unregister_task"]
