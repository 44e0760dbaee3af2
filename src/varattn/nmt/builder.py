"""The translation models, chosen by ``model.type`` in one place.

Each model type registers its config class (a dataclass with ``type``, the vocabulary sizes and
``to_dict``/``from_dict``), the range rules of its ``model:`` section beyond "every integer size is
positive", and its constructor. Everything else (the config loader, training, ``varattn.load``, the
benchmarks) builds through :func:`build_model` and reads configs through :func:`model_config_from_dict`,
so a new architecture is one module plus one :func:`register_model_type` call below.

Every model answers the same interface: ``problem(batch, with_posterior, topk)`` (an
``AlignmentProblem`` for the objective), ``loss``, ``score``, ``encode(src, src_lengths)`` (an object
with ``memory (B, S, Dm)``, ``source_mask`` and ``select(index)``), ``initial_state(n, device)`` and
``decode_step(prev, state, enc, topk)`` (query ``(N, Dq)``, prior scores ``(N, S)``, next state with
``select(index)``) for search, ``head`` (the output layer), ``prior_precision(query)`` and ``inference``
(the inference network or None).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from varattn.errors import VarattnError
from varattn.latent import AlignmentProblem, LinearSoftmaxHead, Objective
from varattn.nmt.batching import Batch
from varattn.nmt.model import LatentAlignmentNMT, ModelConfig
from varattn.nmt.transformer import LatentAlignmentTransformer, TransformerConfig
from varattn.training.config import Rule, one_of, positive, probability_below_one


class EncodedSource(Protocol):
    """A model's encoded source batch: ``memory (B, S, Dm)`` (the vectors ``x_i`` the output layer reads),
    ``source_mask (B, S)`` bool, and ``select`` to reorder or duplicate rows (beam search)."""

    memory: Tensor
    source_mask: Tensor

    def select(self, index: Tensor) -> EncodedSource: ...


class TranslationModel(Protocol):
    """What training, evaluation, search and alignment ask of a translation model (every registered type)."""

    head: LinearSoftmaxHead
    inference: nn.Module | None

    def problem(self, batch: Batch, with_posterior: bool, topk: int | None = None) -> AlignmentProblem: ...

    def encode(self, src: Tensor, src_lengths: Tensor) -> EncodedSource: ...

    def initial_state(self, batch_size: int, device: torch.device) -> Any:
        """The decoder state before the first token; it has ``select(index)``."""

    def decode_step(self, prev: Tensor, state: Any, enc: Any, topk: int | None = None) -> tuple[Tensor, Tensor, Any]:
        """``prev (N,)`` -> query ``(N, Dq)``, prior scores ``(N, S)`` (``-inf`` at padding / outside the
        top-k), next state."""

    def prior_precision(self, query: Tensor) -> Tensor | None: ...


@dataclass(frozen=True)
class ModelType:
    """One architecture: ``config`` its sizes, ``rules`` range checks by key, ``build(cfg, with_inference,
    with_precision)`` the module."""

    name: str
    config: type
    build: Callable[..., nn.Module]
    rules: Mapping[str, Rule]


MODEL_TYPES: dict[str, ModelType] = {}
DEFAULT_TYPE = "lstm"


def register_model_type(spec: ModelType) -> ModelType:
    if spec.name in MODEL_TYPES:
        raise ValueError(f"model type {spec.name!r} is already registered")
    MODEL_TYPES[spec.name] = spec
    return spec


def model_type(name: Any) -> ModelType:
    """The registered type ``name``; a one-line error naming the known ones otherwise."""
    if name not in MODEL_TYPES:
        raise VarattnError(f"model.type must be one of {', '.join(MODEL_TYPES)}, got {name!r}")
    return MODEL_TYPES[name]


def type_of(d: Mapping[str, Any] | Any) -> ModelType:
    """The type of a ``model:`` section (a mapping or a config object); no ``type`` key means ``lstm``."""
    name = d.get("type", DEFAULT_TYPE) if isinstance(d, Mapping) else getattr(d, "type", DEFAULT_TYPE)
    return model_type(name)


def model_config_from_dict(d: Mapping[str, Any]):
    """The config object of a stored ``model`` section (``run.json``), of whichever type it names."""
    return type_of(d).config.from_dict(dict(d))


def build_model(cfg, objective: Objective) -> TranslationModel:
    """The model ``cfg`` describes, with the parts ``objective`` needs (an inference network for modes
    with q, precision heads for the relaxed model)."""
    return type_of(cfg).build(cfg, with_inference=objective.uses_posterior, with_precision=objective.needs_precision)


register_model_type(ModelType("lstm", ModelConfig, LatentAlignmentNMT,
                              {"dropout": probability_below_one, "init_range": positive, "type": one_of("lstm")}))
register_model_type(ModelType("transformer", TransformerConfig, LatentAlignmentTransformer,
                              {"dropout": probability_below_one, "attention_dropout": probability_below_one,
                               "type": one_of("transformer")}))
