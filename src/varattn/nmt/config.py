"""Training configuration: a YAML file, then command-line overrides.

A config file has top-level training keys (see ``TrainConfig``), a ``model:`` section
(``ModelConfig``) and an ``objective:`` section (options of the mode's objective, such as
``num_samples`` or ``temperature``). Shipped configs live in ``varattn/configs`` and can be
named without a path: ``toy`` (the embedded default), ``small`` (a real corpus on two CPU
cores) and ``iwslt14`` (the paper's sizes and recipe).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from varattn.device import PRECISIONS
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
    # crash safety: write resume/ every ``save_every`` updates (and at every validation); 0/None: validations only
    save_every: int | None = 500
    log_every: int = 25  # a train record in metrics.jsonl every this many updates
    threads: int | None = None
    device: str = "auto"  # auto (a CUDA GPU if there is one, else the CPU), cpu, cuda, cuda:N
    precision: str = "fp32"  # fp32, or bf16: products under torch.autocast in bfloat16, losses in float32
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

    def _check_types(self) -> None:
        """Every key has its declared type; numbers YAML reads as strings (``3e-4``) become floats."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if value is None:
                if "None" in kind:
                    continue
                raise VarattnError(f"{f.name} must be set")
            if kind.startswith("float") and isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise VarattnError(f"{f.name} must be a number, got {value!r}") from None
            expected = {"int": (int,), "float": (int, float), "str": (str,), "list": (list, tuple),
                        "dict": (dict,)}[kind.split("[")[0].split(" ")[0]]
            if isinstance(value, bool) or not isinstance(value, expected):
                noun = {"int": "an integer", "float": "a number", "str": "a string", "list": "a list",
                        "dict": "a mapping"}[kind.split("[")[0].split(" ")[0]]
                raise VarattnError(f"{f.name} must be {noun}, got {value!r}")
            if kind.startswith("float"):
                value = float(value)
                if not math.isfinite(value):
                    raise VarattnError(f"{f.name} must be finite, got {value!r}")
            setattr(self, f.name, value)
        if len(self.synthetic_sizes) != 3 or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in self.synthetic_sizes):
            raise VarattnError(f"synthetic_sizes must be three non-negative integers (train, valid, test), got "
                               f"{self.synthetic_sizes!r}")
        for key in ("lr", "clip", "lr_decay", "max_minutes"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise VarattnError(f"{key} must be positive, got {value!r}")

    def validate(self) -> TrainConfig:
        self._check_types()
        make_objective(self.mode, **self.objective)  # bad mode names and options fail here
        unknown = set(self.model) - set(ModelConfig.__dataclass_fields__)
        if unknown:
            raise VarattnError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        if self.batch_size < 1:
            raise VarattnError("batch_size must be at least 1")
        if self.precision not in PRECISIONS:
            raise VarattnError(f"precision must be {' or '.join(PRECISIONS)}, got {self.precision!r}")
        for key in ("save_every", "eval_every", "max_steps"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise VarattnError(f"{key} must be a non-negative integer, got {value!r}")
        for key in ("log_every", "max_bad_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise VarattnError(f"{key} must be a positive integer, got {value!r}")
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
