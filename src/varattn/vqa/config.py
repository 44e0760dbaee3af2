"""The VQA task's configuration: data, model and objective (the loop's keys belong to the core).

The ``objective:`` section is read as the translation task's is (``varattn.objective_options``): options
of the trained mode's objective, and per-mode sections such as ``var-relaxed: {warmup_steps: 100}``.

Shipped configs live in ``varattn/configs/vqa`` and can be named without a path: ``easy`` (the
embedded default: easy-VQA on two CPU cores) and ``vqa2`` (VQA 2.0 region features at the paper's
sizes and recipe).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from varattn.errors import VarattnError
from varattn.objective_options import objective_section
from varattn.training.config import (
    TrainingConfig,
    build,
    checked_model,
    config_data,
    non_negative,
    one_of,
    positive,
    probability_below_one,
    spec,
    without_data_sizes,
)
from varattn.vqa.model import CNN_REGIONS, REGION_ENCODERS, VQAModelConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "vqa"
DATA_SOURCES = ("easy-vqa", "features")


@dataclass
class VQADataConfig:
    """Where the questions and regions come from.

    ``source: easy-vqa`` reads the ``easy-vqa`` package (``limit_train`` / ``limit_test`` keep the
    first questions of a split; ``valid_images`` training images are held out, with their
    questions, for validation). ``source: features`` reads the official VQA 2.0 JSON files and
    precomputed region features (HDF5, TSV or a directory of npz files).
    """

    source: str = "easy-vqa"
    limit_train: int | None = None
    limit_test: int | None = None
    valid_images: int = 400
    train_questions: str | None = None
    train_annotations: str | None = None
    train_features: str | None = None
    valid_questions: str | None = None
    valid_annotations: str | None = None
    valid_features: str | None = None
    max_valid_questions: int | None = None
    min_answer_count: int = 9
    max_answers: int | None = None
    max_question_len: int = 14
    min_word_count: int = 1
    max_regions: int = 36

    def validate(self) -> None:
        if self.source == "features":
            needed = ["train_questions", "train_annotations", "train_features", "valid_questions",
                      "valid_annotations"]
            absent = [k for k in needed if not getattr(self, k)]
            if absent:
                raise VarattnError("VQA 2.0 training needs " + ", ".join(f"data.{k}" for k in absent))


def data_section(d: dict | VQADataConfig) -> VQADataConfig:
    """The checked ``data:`` section."""
    if isinstance(d, VQADataConfig):
        d = dataclasses.asdict(d)
    rules = {"limit_train": positive, "limit_test": positive, "valid_images": non_negative,
             "max_valid_questions": positive, "min_answer_count": positive, "max_answers": positive,
             "max_question_len": positive, "min_word_count": positive, "max_regions": positive,
             "source": one_of(*DATA_SOURCES)}
    cfg = build(VQADataConfig, d, prefix="data.", rules=rules)
    cfg.validate()
    return cfg


#: model keys the data decides
_FROM_DATA = ("num_words", "num_answers")


def model_section(d: dict | VQAModelConfig) -> VQAModelConfig:
    """The checked ``model:`` section."""
    rules = {"dropout": probability_below_one, "region_encoder": one_of(*REGION_ENCODERS),
             "cnn_regions": one_of(*CNN_REGIONS)}
    cfg = checked_model(VQAModelConfig, d, _FROM_DATA, rules)
    if not cfg.cnn_channels or any(c < 1 for c in cfg.cnn_channels):
        raise VarattnError(f"model.cnn_channels must be positive integers, got {cfg.cnn_channels!r}")
    return cfg


@dataclass
class VQAConfig(TrainingConfig):
    """Everything ``varattn vqa train`` needs: the core's training keys, ``mode``, batches, ``data``, ``model``."""

    lr: float = spec(5e-4, rule=positive)
    epochs: int = spec(50, rule=non_negative)
    mode: str = "var-enum"
    batch_size: int = spec(512, rule=positive)
    valid_batch_size: int = spec(128, rule=positive)
    data: VQADataConfig = spec(default_factory=VQADataConfig, section=data_section)
    model: VQAModelConfig = spec(default_factory=VQAModelConfig, section=model_section)
    objective: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.data, dict):
            self.data = data_section(self.data)
        if isinstance(self.model, dict):
            self.model = model_section(self.model)

    def check(self) -> None:
        self.objective = objective_section(self.mode, self.objective)

    def data_config(self) -> VQADataConfig:
        return self.data

    def model_config(self, num_words: int, num_answers: int) -> VQAModelConfig:
        return dataclasses.replace(self.model, num_words=num_words, num_answers=num_answers)

    def to_dict(self) -> dict:
        return without_data_sizes(self, _FROM_DATA)


def load_config(name: str, overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> VQAConfig:
    """Read a config file (a path or a shipped name), then apply ``overrides`` (flags) and ``sets`` (``key=value``)."""
    return VQAConfig.from_dict(config_data(name, CONFIG_DIR, overrides, sets, task="vqa"))
