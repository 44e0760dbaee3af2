"""Training configuration: a YAML file, then command-line overrides.

A config file has top-level training keys (see ``TrainConfig``), a ``model:`` section
(``ModelConfig``) and an ``objective:`` section (options of the mode's objective, such as
``num_samples`` or ``temperature``). Shipped configs live in ``varattn/configs`` and can be
named without a path: ``toy`` (the embedded default), ``small`` (a real corpus on two CPU
cores) and ``iwslt14`` (the paper's sizes and recipe).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from varattn.errors import VarattnError
from varattn.latent import make_objective
from varattn.nmt.model import ModelConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class TrainConfig:
    """Everything ``varattn train`` needs apart from the data files' contents."""

    mode: str = "var-enum"
    seed: int = 1
    # data: fairseq-style prefixes, or the synthetic task when ``train`` is None
    train: str | None = None
    valid: str | None = None
    src_lang: str = "de"
    tgt_lang: str = "en"
    synthetic_seed: int = 0
    synthetic_sizes: list[int] = field(default_factory=lambda: [6000, 300, 300])
    max_len: int | None = 125
    subword: str = "auto"
    subword_vocab_size: int = 8000
    max_vocab: int | None = None
    # batching
    batch_size: int = 6
    batch_tokens: int | None = None
    valid_batch_size: int = 32
    # optimisation (notes B: Adam 3e-4, clip 5, halve lr when validation worsens from epoch 2)
    lr: float = 3e-4
    clip: float = 5.0
    epochs: int = 30
    max_steps: int | None = None
    max_minutes: float | None = None
    lr_decay: float = 0.5
    decay_start_epoch: int = 2
    eval_every: int | None = None
    max_valid_sentences: int | None = None
    max_bad_steps: int = 20
    threads: int | None = None
    model: dict[str, Any] = field(default_factory=dict)
    objective: dict[str, Any] = field(default_factory=dict)

    def model_config(self, src_vocab: int, tgt_vocab: int) -> ModelConfig:
        cfg = ModelConfig.from_dict(self.model)
        cfg.src_vocab_size, cfg.tgt_vocab_size = src_vocab, tgt_vocab
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise VarattnError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    def validate(self) -> TrainConfig:
        make_objective(self.mode, **self.objective)  # bad mode names and options fail here
        unknown = set(self.model) - set(ModelConfig.__dataclass_fields__)
        if unknown:
            raise VarattnError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        if self.batch_size < 1:
            raise VarattnError("batch_size must be at least 1")
        if (self.train is None) != (self.valid is None):
            raise VarattnError("give both --train and --valid, or neither (the synthetic task)")
        return self


def resolve_config_path(name: str) -> Path:
    """A config path, or the name of a shipped config (``toy``, ``small``, ``iwslt14``)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise VarattnError(f"config not found: {name} (shipped configs: {names})")


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_override(d: dict, assignment: str) -> None:
    """Apply ``key=value`` or ``section.key=value`` (value parsed as YAML) to ``d``."""
    if "=" not in assignment:
        raise VarattnError(f"override must look like key=value, got {assignment!r}")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    target = d
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise VarattnError(f"cannot set {key}: {part} is not a section")
    target[parts[-1]] = _parse_value(value)


def load_config(name: str, overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> TrainConfig:
    """Read a config file, then apply ``overrides`` (flag values) and ``sets`` (``key=value``)."""
    path = resolve_config_path(name)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise VarattnError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise VarattnError(f"config {path} must be a mapping")
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    for assignment in sets or []:
        apply_override(data, assignment)
    return TrainConfig.from_dict(data).validate()
