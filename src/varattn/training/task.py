"""What a task (NMT, VQA) gives the training core.

The core (``varattn.training``) owns the loop, the optimizer and learning-rate schedule, resume,
checkpoints, metrics and (later) data parallelism; it never imports a task. A task owns its data,
vocabularies, model and figures, and plugs in by implementing :class:`Task`.

Life of a task object inside one training run::

    task = SomeTask(task_config)          # the task's own configuration (data, model, objective)
    task.prepare(run_dir)   # fresh run: read the data, build vocabularies (may write e.g. spm models)
    task.save(run_dir)      # fresh run: write the run files (vocabularies); returns run.json info
      -- or --
    task.load(run_dir, info)  # resumed run: read the run files back, read the data again

    model = task.build_model()            # then the core moves it to the device, builds Adam, ...
    for epoch ...:
        for batch in task.train_batches(epoch):        # the same list every time for a given epoch
            out = task.loss(model, batch, step)         # surrogate.backward() / normaliser
    sums = task.valid_sums(model, task.valid_batches())  # summable, so ranks can add them up
    result = task.valid_result(sums)      # figures for metrics.jsonl + the metric (lower is better)
    task.heatmaps(model)                  # optional: alignments of a few fixed validation examples

A batch is whatever the task likes (the core only counts and indexes the list
``train_batches`` returns); figures are plain Python floats.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn


@dataclass
class BatchLoss:
    """The loss terms of one batch.

    Attributes:
        surrogate: scalar tensor, *summed* over the batch (not averaged); ``surrogate.backward()``
            gives the batch's gradient estimate. The core divides it by the normaliser (summed over
            ranks when training on several processes) before ``backward``.
        normaliser: what the summed surrogate is divided by. The paper divides by the number of
            sentences in the batch; a task may choose otherwise (e.g. questions).
        figures: summable report figures (Python floats summed over the batch). ``nll`` and the
            task's :attr:`Task.unit` (``tokens`` for NMT, ``questions`` for VQA) are required: the
            train record reports ``loss = nll / unit``, ``ppl = exp(loss)`` and every other figure
            ``f`` as ``f / unit`` (e.g. ``kl``); the unit also gives the speed, ``<unit>_per_s``.
    """

    surrogate: Tensor
    normaliser: float
    figures: dict[str, float]


@dataclass
class Validation:
    """The result of a validation pass.

    Attributes:
        figures: JSON-able figures written to the validation record of ``metrics.jsonl`` (and
            TensorBoard where numeric), e.g. ``ppl``, ``accuracy``.
        metric: what the learning-rate schedule and the best checkpoint follow; lower is better.
        summary: one human line for the progress output, e.g. ``"valid ppl 12.3, accuracy 0.41"``.
    """

    figures: dict[str, Any]
    metric: float
    summary: str = ""


@dataclass
class Heatmap:
    """Alignment weights of one fixed validation example, for TensorBoard images.

    Attributes:
        name: a short stable name (e.g. ``"valid-3"``); one image series per name.
        prior: ``(T, S)`` prior alignment probabilities p(z_t = s | x, y_<t); rows are output
            positions (target tokens, or 1 row for a single answer), columns input positions
            (source tokens, regions).
        posterior: ``(T, S)`` posterior q(z_t = s | x, y), or None for modes without one.
        rows: ``T`` labels of the output positions (may be empty).
        cols: ``S`` labels of the input positions (may be empty).
    """

    name: str
    prior: np.ndarray
    posterior: np.ndarray | None = None
    rows: list[str] = field(default_factory=list)
    cols: list[str] = field(default_factory=list)


class Task(ABC):
    """A task the training core can train; see the module docstring for the order of calls.

    ``name`` is written to ``run.json`` as ``"task"``. Every method that reads data must be
    deterministic given the task's configuration: a resumed run rebuilds the same batches.
    """

    name: ClassVar[str]
    #: what the task predicts, counted in the figures of :meth:`loss` under this key; train records
    #: report figures per unit and the speed as ``<unit>_per_s``
    unit: ClassVar[str] = "tokens"
    #: the unit in the progress bar's speed (``tok_s``)
    unit_short: ClassVar[str] = "tok"

    # -- run files --------------------------------------------------------------------------------
    @abstractmethod
    def prepare(self, run_dir: Path) -> None:
        """Fresh run: read (or generate) the data and build vocabularies.

        May write helper files into ``run_dir`` (which exists); a failure here should raise
        ``VarattnError`` (the core then removes what this call wrote).
        """

    @abstractmethod
    def save(self, run_dir: Path) -> dict[str, Any]:
        """Fresh run, after ``prepare``: write the task's run files (vocabularies, ...) into ``run_dir``.

        Returns JSON-able information the core stores in ``run.json`` next to ``"task"`` and
        ``"config"`` (e.g. model sizes, segmentation) and hands back to :meth:`load` on resume.
        """

    @abstractmethod
    def load(self, run_dir: Path, info: dict[str, Any]) -> None:
        """Resumed run: read the run files back (``info`` is ``run.json``) and read the data again.

        Raise ``VarattnError`` if the data no longer matches the run (e.g. a changed vocabulary).
        """

    def fingerprint(self) -> str:
        """A digest of the training and validation data as the model sees them (e.g. sha256 of the ids).

        Stored with the resume state; a resumed run whose fingerprint differs is refused, because
        its batch order would differ. The default (empty) disables the check.
        """
        return ""

    # -- model ------------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (on the CPU; the core moves it to the device).

        Called after ``prepare`` or ``load`` and after the core seeded torch, so initialisation
        is reproducible. On resume the core loads the saved weights into it.
        """

    # -- training ---------------------------------------------------------------------------------
    @abstractmethod
    def train_batches(self, epoch: int) -> Sequence[Any]:
        """The training batches of ``epoch`` (0-based), in order.

        Must return the same batches in the same order every time it is called with the same
        ``epoch`` (shuffle with a generator seeded from the config and ``epoch``, never with a global
        one): a resumed run continues at a position inside this list, and data-parallel ranks
        each take their share of it.
        """

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any, step: int) -> BatchLoss:
        """Forward ``batch`` through ``model`` (in training mode) and return its loss terms.

        ``step`` is the number of updates taken so far (for schedules inside an objective). The
        task moves the batch to the model's device. Runs under the core's autocast context.
        """

    # -- validation -------------------------------------------------------------------------------
    @abstractmethod
    def valid_batches(self) -> Sequence[Any]:
        """The validation batches, in a fixed order."""

    @abstractmethod
    def valid_sums(self, model: nn.Module, batches: Sequence[Any]) -> dict[str, float]:
        """Summable validation figures of ``batches`` (e.g. log-likelihood, tokens, correct).

        Called under ``torch.no_grad`` with the model in evaluation mode, possibly on a share of
        :meth:`valid_batches` per rank: the core adds the dictionaries of all ranks key by key.
        """

    @abstractmethod
    def valid_result(self, sums: dict[str, float]) -> Validation:
        """Turn summed validation figures (over all batches) into the validation record and metric."""

    def heatmaps(self, model: nn.Module) -> list[Heatmap]:
        """Optional: prior / posterior alignments of a few fixed validation examples.

        Called under ``torch.no_grad`` with the model in evaluation mode at each validation, on
        one process only; the core draws them as TensorBoard images. Default: none.
        """
        return []


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
