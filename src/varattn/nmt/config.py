"""NMT training configuration: a YAML file, then command-line overrides.

A config file has the generic training keys (``varattn.training.config.TrainingConfig``: lr, clip,
epochs, max_steps, seed, device, precision, ...), the NMT keys of ``TrainConfig`` below (data,
batching, mode), a ``model:`` section (``ModelConfig``) and an ``objective:`` section (options of the
mode's objective, such as ``num_samples`` or ``temperature``, and per-mode sections: see
``varattn.objective_options``). Every key is typed and range-checked before anything is built or
written. Shipped configs live in ``varattn/configs`` and can be named without a path: ``toy`` (the
embedded default), ``small`` (a real corpus on two CPU cores) and ``iwslt14`` (the paper's sizes and
recipe), ``transformer-small`` and ``transformer-iwslt14`` (the Transformer, ``model.type: transformer``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from varattn.errors import VarattnError
from varattn.nmt.builder import type_of
from varattn.nmt.model import ModelConfig
from varattn.objective_options import objective_section
from varattn.training.config import (
    TrainingConfig,
    checked_model,
    config_data,
    non_negative,
    one_of,
    positive,
    spec,
    without_data_sizes,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
#: model keys the data decides
_FROM_DATA = ("src_vocab_size", "tgt_vocab_size")


def model_section(d: Any):
    """The checked ``model:`` section, of the architecture its ``type`` names (``lstm`` when absent):
    ``ModelConfig``, ``TransformerConfig`` (``varattn.nmt.builder``)."""
    spec = type_of(d)
    return checked_model(spec.config, d, _FROM_DATA, spec.rules)


@dataclass
class TrainConfig(TrainingConfig):
    """Everything ``varattn train`` needs apart from the data files' contents."""

    mode: str = "var-enum"
    # data: fairseq-style prefixes, or the synthetic task when ``train`` is None
    train: str | None = None
    valid: str | None = None
    src_lang: str = "de"
    tgt_lang: str = "en"
    synthetic_seed: int = 0
    synthetic_sizes: list[int] = field(default_factory=lambda: [6000, 300, 300])
    max_len: int | None = spec(125, rule=positive)
    subword: str = spec("auto", rule=one_of("auto", "none", "sentencepiece"))
    subword_vocab_size: int = spec(8000, rule=positive)
    max_vocab: int | None = spec(None, rule=positive)
    # batching
    batch_size: int = spec(6, rule=positive)
    batch_tokens: int | None = spec(None, rule=positive)
    valid_batch_size: int = spec(32, rule=positive)
    max_valid_sentences: int | None = spec(None, rule=non_negative)
    model: ModelConfig = spec(default_factory=ModelConfig, section=model_section)
    objective: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.model, dict):  # TrainConfig(model={...}) in code
            self.model = model_section(self.model)

    def check(self) -> None:
        self.objective = objective_section(self.mode, self.objective)
        if len(self.synthetic_sizes) != 3 or not all(n >= 0 for n in self.synthetic_sizes):
            raise VarattnError(f"synthetic_sizes must be three non-negative integers (train, valid, test), got "
                               f"{self.synthetic_sizes!r}")
        if (self.train is None) != (self.valid is None):
            raise VarattnError("give both --train and --valid, or neither (the synthetic task)")

    def model_config(self, src_vocab: int, tgt_vocab: int) -> ModelConfig:
        return dataclasses.replace(self.model, src_vocab_size=src_vocab, tgt_vocab_size=tgt_vocab)

    def to_dict(self) -> dict:
        return without_data_sizes(self, _FROM_DATA)


def load_config(name: str, overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> TrainConfig:
    """Read a config file, then apply ``overrides`` (flag values) and ``sets`` (``key=value``)."""
    return TrainConfig.from_dict(config_data(name, CONFIG_DIR, overrides, sets, task="nmt"))
