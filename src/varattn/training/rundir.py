"""The run directory of a training run: made for a fresh run, checked before a stopped one continues.

A fresh run (:func:`create`) needs a directory that does not hold a run yet; it is created if missing
and locked (:mod:`varattn.training.rundir_lock`) before anything is written. The task then prepares its
data and writes its run files, and ``run.json`` (:mod:`varattn.training.run_info`) comes last, with the
SHA-256 of every file the task wrote. A task that fails while preparing leaves nothing behind: the files
it wrote, the lock file and a directory made for it are removed.

A stopped run (:func:`lock_existing`, :func:`check_resumable`, :func:`check_unfinished`,
:func:`check_same_data`) continues only from a ``resume/`` checkpoint, with the configuration of its
``run.json`` (only ``RESUMABLE_KEYS`` may change, and :func:`save_config` records them), unchanged run
files and data, and a target it has not reached yet. Each refusal is one line saying what to do instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from varattn.checkpoint import backup_path
from varattn.errors import VarattnError
from varattn.fileio import save_json
from varattn.training import rundir_lock
from varattn.training.config import TrainingConfig
from varattn.training.metrics import METRICS_FILE
from varattn.training.run_info import FILES_KEY, RUN_FILE, RUN_FORMAT, check_files, read_run_info, record_files
from varattn.training.rundir_lock import LOCK_FILE, RunDirLock
from varattn.training.state import RESUME_DIR, TrainerState
from varattn.training.task import Task

# -- a fresh run ---------------------------------------------------------------------------------------


def create(task: Task, cfg: TrainingConfig, run_dir: Path) -> tuple[torch.nn.Module, RunDirLock]:
    """Rank 0 of a fresh run: create ``run_dir`` and lock it, prepare the task, write ``run.json``.

    Returns the new model and the writer lock. ``run.json`` records the SHA-256 of every file the task
    wrote (vocabularies, sentencepiece models), which loading and resuming check.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise VarattnError(f"{run_dir} is a file; --out needs a directory")
    if (run_dir / RUN_FILE).exists():
        with rundir_lock.acquire(run_dir):  # a run being written: the error names its writer
            raise VarattnError(f"{run_dir} already holds a run; use --resume to continue it or another --out")
    created = not run_dir.exists()
    try:
        before = set() if created else {p.name for p in run_dir.iterdir()}
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VarattnError(f"cannot create the run directory {run_dir}: {exc.strerror or exc}") from None
    lock = rundir_lock.acquire(run_dir)
    if (run_dir / RUN_FILE).exists():  # another process started (and finished) the run while we were looking
        lock.release()
        raise VarattnError(f"{run_dir} already holds a run; use --resume to continue it or another --out")
    try:
        task.prepare(run_dir)
        model = task.build_model()
    except BaseException:
        _remove_partial_start(run_dir, created, before, lock)
        raise
    try:
        _write_run_file(task, cfg, run_dir, task.save(run_dir), ignore=before)
    except BaseException:
        lock.release()
        raise
    return model, lock


def _write_run_file(task: Task, cfg: TrainingConfig, run_dir: Path, info: dict, ignore: set[str]) -> None:
    """``run.json`` of a fresh run: format, task, config, the task's ``info`` and the files it wrote."""
    skip = {LOCK_FILE, METRICS_FILE, RUN_FILE, *ignore}
    written = [p.name for p in run_dir.iterdir() if p.is_file() and p.name not in skip and not p.name.startswith(".")]
    save_json(run_dir / RUN_FILE, {"format": RUN_FORMAT, "task": task.name, "config": cfg.to_dict(), **info,
                                   FILES_KEY: record_files(run_dir, written)})


def _remove_partial_start(run_dir: Path, created: bool, before: set[str], lock: RunDirLock) -> None:
    """A fresh run failed while preparing its data: delete the files it wrote (sentencepiece models, the lock)."""
    for path in run_dir.iterdir():
        if path.name not in before and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
    lock.release()
    if created and not any(run_dir.iterdir()):
        run_dir.rmdir()


# -- a stopped run -------------------------------------------------------------------------------------


def lock_existing(run_dir: Path, take: bool) -> RunDirLock | None:
    """The writer lock of the run in ``run_dir`` (when ``take``: rank 0); a one-line error if there is no run."""
    if not (run_dir / RUN_FILE).is_file():
        raise VarattnError(f"nothing to resume in {run_dir} (no {RUN_FILE})")
    return rundir_lock.acquire(run_dir) if take else None


def _comparable(cfg: TrainingConfig, d: dict) -> dict:
    """A config as JSON would give it back (tuples become lists), defaults filled in."""
    return json.loads(json.dumps(type(cfg).from_dict(d).to_dict()))


def check_resumable(run_dir: Path, cfg: TrainingConfig, task: Task) -> tuple[dict, bool]:
    """``run.json`` of ``run_dir``, and whether ``cfg`` changed a resumable key; a one-line error otherwise."""
    if not (run_dir / RUN_FILE).is_file():
        raise VarattnError(f"nothing to resume in {run_dir} (no {RUN_FILE})")
    info = read_run_info(run_dir, task.name)
    resume_dir = run_dir / RESUME_DIR
    if not resume_dir.is_dir() and not backup_path(resume_dir).is_dir():
        raise VarattnError(_no_resume_message(run_dir))
    stored, current = _comparable(cfg, info["config"]), _comparable(cfg, cfg.to_dict())
    changed = [k for k in current if k not in cfg.RESUMABLE_KEYS and stored.get(k) != current[k]]
    if changed:
        raise VarattnError(
            f"cannot resume {run_dir} with a different configuration ("
            + "; ".join(f"{k}: {stored.get(k)!r} in {RUN_FILE}, {current[k]!r} now" for k in changed)
            + f"); only {', '.join(cfg.RESUMABLE_KEYS)} may change")
    check_files(run_dir, info)
    return info, stored != current


def _no_resume_message(run_dir: Path) -> str:
    """Why a run without ``resume/`` cannot continue, and what its trained weights (if any) are still good for."""
    trained = [name for name in ("best", "last") if (run_dir / name).is_dir() or backup_path(run_dir / name).is_dir()]
    if not trained:
        return (f"nothing to resume in {run_dir}: it has no {RESUME_DIR}/ checkpoint (training stopped before its "
                "first save); delete it and start the run again")
    held = " and ".join(f"{name}/" for name in trained)
    return (f"cannot resume {run_dir}: it has no {RESUME_DIR}/ checkpoint (no optimizer state to continue from), "
            f"but {held} hold trained weights: evaluate or use them as they are (--checkpoint {trained[0]}), or "
            "start a new run with another --out")


def check_unfinished(run_dir: Path, cfg: TrainingConfig, state: TrainerState) -> None:
    """A run that reached its target under ``cfg`` and was validated there has nothing left to do: one line."""
    if state.finished(cfg):
        raise VarattnError(
            f"{run_dir} has already finished: it stopped after step {state.step} ({state.epoch} complete epochs) "
            f"with max_steps={cfg.max_steps} and epochs={cfg.epochs}; to train further, resume with a larger "
            "--max-steps or --epochs")


def check_same_data(run_dir: Path, state: TrainerState, task: Task) -> None:
    """The loaded task's data is what the run trained on (its batch order depends on it)."""
    if state.data_sha256 is not None and state.data_sha256 != task.fingerprint():
        raise VarattnError(f"cannot resume {run_dir}: the training or validation data changed since the run "
                           "started")


def save_config(run_dir: Path, info: dict, cfg: TrainingConfig) -> None:
    """Write ``cfg`` (new limits) into ``run.json``, so that a later resume keeps them."""
    info["config"] = cfg.to_dict()
    save_json(run_dir / RUN_FILE, info)


__all__ = ["check_resumable", "check_same_data", "check_unfinished", "create", "lock_existing", "save_config"]
