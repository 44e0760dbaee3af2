"""varattn: latent alignment models and variational attention (Deng et al., NeurIPS 2018).

``varattn.latent`` is the model-agnostic layer (alignment distributions, emissions and the
nine training objectives); ``varattn.nmt`` is the paper's LSTM translation model;
``varattn.load(run_dir)`` opens a trained run.
"""

from __future__ import annotations

__version__ = "0.1.0"


#: the task of a run directory whose run.json names none (the first releases trained only translation)
DEFAULT_TASK = "nmt"


def register_shipped_tasks() -> None:
    """Register the shipped tasks (translation, VQA) in ``varattn.training.registry``, once: the one place that
    imports every task. A task of your own registers itself the same way (``register_task(TaskSpec(...))``)."""
    import varattn.nmt.registration  # noqa: F401  (registers "nmt")
    import varattn.vqa.registration  # noqa: F401  (registers "vqa")


def run_task(run_dir, task: str | None = None):
    """The registered task (a ``TaskSpec``) of a run directory and its ``run.json``, which names the task.

    ``task``: the run must be of that task, or a one-line error names the commands that read it.
    """
    from pathlib import Path

    from varattn.training.registry import get_task
    from varattn.training.run_info import RUN_FILE, read_run_info

    register_shipped_tasks()
    info = read_run_info(run_dir, task)
    return get_task(str(info.get("task", DEFAULT_TASK)), f" in {Path(run_dir) / RUN_FILE}"), info


def load(run_dir, checkpoint: str = "best", device: str | None = "auto", task: str | None = None):
    """Load a trained run directory onto ``device`` (``auto``: a CUDA GPU if there is one, else the CPU).

    The run's ``run.json`` names its ``"task"``, and the task registry (``varattn.training.registry``) opens it:
    a ``varattn.nmt.run.TrainedModel`` for a translation run, a ``varattn.vqa.run.TrainedVQA``
    (``answer(question, image=...)``) for a VQA run, whatever a registered task of your own gives.
    ``task``: accept only a run of that task.
    """
    return run_task(run_dir, task)[0].load(run_dir, checkpoint, device)


__all__ = ["DEFAULT_TASK", "__version__", "load", "register_shipped_tasks", "run_task"]
