"""What ``--resume`` restores: the counters of a run, the RNG state, and the ``resume/`` checkpoint.

``resume/`` holds everything the numbers depend on -- model, Adam state, learning rate, step, epoch,
position in the epoch's batch order, best metric, the open train-record window and torch's RNG
state(s) of every rank -- so an interrupted run continued with ``--resume`` ends bit-identical to one that was
never stopped. (Batching draws from its own seeded ``random.Random``, never the global generators.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

import torch

from varattn.checkpoint import load_checkpoint, save_checkpoint
from varattn.errors import VarattnError
from varattn.training.nested_state import flatten_state, unflatten_state

if TYPE_CHECKING:
    from varattn.training.config import TrainingConfig

RESUME_DIR = "resume"
MODEL_PREFIX = "model/"


@dataclass
class TrainerState:
    """Counters that ``--resume`` restores (with the model, optimizer and RNG states)."""

    step: int = 0
    epoch: int = 0
    #: batches of the current epoch already used
    batch_in_epoch: int = 0
    lr: float = 0.0
    #: best validation metric so far, any validation (what ``best/`` holds)
    best_metric: float = math.inf
    #: best validation metric at an epoch's end: what the learning-rate schedule compares with
    epoch_best_metric: float = math.inf
    bad_steps: int = 0
    consecutive_bad: int = 0
    #: step of the latest validation (-1: none yet); a run whose target is reached and validated is finished
    valid_step: int = -1
    #: sums of the report figures over the updates since the last train record
    window: dict = field(default_factory=dict)
    #: size of metrics.jsonl when this state was saved; --resume cuts the file back to it
    metrics_bytes: int | None = None
    #: the latest validation record (what ``train`` returns)
    last_valid: dict | None = None
    #: the task's fingerprint of its data: the batch order of a resumed run depends on it
    data_sha256: str | None = None

    def target_reached(self, cfg: TrainingConfig) -> bool:
        """``cfg.epochs`` complete epochs, or ``cfg.max_steps`` updates (when set)."""
        return self.epoch >= cfg.epochs or (cfg.max_steps is not None and self.step >= cfg.max_steps)

    def finished(self, cfg: TrainingConfig) -> bool:
        """Target reached and validated there: nothing left to do."""
        return self.target_reached(cfg) and self.valid_step == self.step

    def count_window_in(self, unit: str) -> None:
        """Name the window's count ``unit``: states saved before tasks named their unit called it ``tokens``."""
        if unit not in self.window and "tokens" in self.window:
            self.window[unit] = self.window.pop("tokens")


def rng_state() -> dict:
    """Every global generator training draws from: torch's CPU one, and CUDA's when in use."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():  # a run moved to another machine keeps what fits
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def save_resume(directory, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainerState,
                rng_states: list[dict]) -> None:
    """Write the ``resume/`` checkpoint atomically; ``rng_states``: every rank's :func:`rng_state`, in rank order."""
    tensors, skeleton = flatten_state({"optimizer": optimizer.state_dict(), "rng": rng_states})
    weights = {f"{MODEL_PREFIX}{k}": v.detach() for k, v in model.state_dict().items()}
    save_checkpoint(directory, {**weights, **tensors}, {"skeleton": skeleton, "state": asdict(state)})


@dataclass
class ResumePoint:
    """A ``resume/`` checkpoint as read: the counters, the model weights and the rest (optimizer, RNG)."""

    state: TrainerState
    weights: dict[str, torch.Tensor]
    rest: dict

    @property
    def rng_states(self) -> list[dict]:
        """Every rank's RNG state, in rank order (one for a single-process run)."""
        states = self.rest.get("rng")
        return [states] if isinstance(states, dict) else list(states or [])

    def apply(self, where, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Load the weights and Adam's state; a mismatch is a one-line VarattnError."""
        try:
            model.load_state_dict(self.weights)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VarattnError(f"checkpoint {where} does not fit the model of this run ({first})") from None
        try:
            optimizer.load_state_dict(self.rest["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise VarattnError(f"checkpoint {where} is corrupted (optimizer state: {exc})") from None

    def restore_rng(self, where, rank: int) -> None:
        """Rank ``rank``'s RNG state from the checkpoint (saved by as many processes as now run)."""
        try:
            set_rng_state(self.rng_states[rank])
        except (IndexError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise VarattnError(f"checkpoint {where} is corrupted (RNG state: {exc})") from None


def read_resume(directory) -> ResumePoint:
    tensors, meta = load_checkpoint(directory)
    try:
        known = {f.name for f in fields(TrainerState)}
        state = TrainerState(**{k: v for k, v in meta["state"].items() if k in known})
        rest = {k: v for k, v in tensors.items() if not k.startswith(MODEL_PREFIX)}
        rest = unflatten_state(rest, meta["skeleton"])
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise VarattnError(f"checkpoint {directory} is corrupted (bad trainer state: {exc})") from None
    weights = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    return ResumePoint(state, weights, rest)
