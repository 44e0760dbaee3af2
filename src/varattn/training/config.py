"""Typed configuration: the generic training keys, and the checks every config section goes through.

A task's configuration is a dataclass that extends :class:`TrainingConfig` with its own keys (data,
batching, a ``model`` section, ...), so one flat YAML file configures a run. Every key is checked
by :func:`check_fields` before anything is built or written: its type (numbers YAML reads as
strings, ``3e-4``, become floats), its range (declared with :func:`spec` in the field's metadata or
passed in ``rules``), unknown keys. A bad value is one :class:`VarattnError` line naming the key,
with its section: ``model.dropout must be a number, got 'abc'``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from varattn.device import PRECISIONS
from varattn.errors import VarattnError

#: a range check: returns what is wrong with a value ("must be positive") or None
Rule = Callable[[Any], "str | None"]
C = TypeVar("C")


def positive(value) -> str | None:
    return None if value > 0 else "must be a positive integer" if isinstance(value, int) else "must be positive"


def non_negative(value) -> str | None:
    if value >= 0:
        return None
    return "must be a non-negative integer" if isinstance(value, int) else "must be non-negative"


def probability_below_one(value) -> str | None:
    return "must be in [0, 1)" if not 0 <= value < 1 else None


def one_of(*choices: str) -> Rule:
    def check(value) -> str | None:
        return None if value in choices else f"must be {' or '.join(choices)}"
    return check


def spec(default=dataclasses.MISSING, *, rule: Rule | None = None, section: Callable | None = None, **kwargs):
    """A dataclass field whose value must also pass ``rule`` (a range check).

    ``section``: a function that builds and checks the value of a section (a nested mapping such as
    ``model:``) from the raw value; it replaces the type check of :func:`build`.
    """
    metadata = {k: v for k, v in (("rule", rule), ("section", section)) if v is not None}
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class TrainingConfig:
    """The task-agnostic training keys (the paper's recipe: Adam 3e-4, clip 5, halve the lr from epoch 2).

    A task's config subclasses this and adds its own keys.
    """

    seed: int = 1
    lr: float = spec(3e-4, rule=positive)
    clip: float = spec(5.0, rule=positive)
    epochs: int = spec(30, rule=non_negative)
    #: stop after this many updates (None: after ``epochs``)
    max_steps: int | None = spec(None, rule=non_negative)
    #: stop (and validate) after this much wall-clock time
    max_minutes: float | None = spec(None, rule=positive)
    #: epoch-halving (the paper's rule below) or inverse-sqrt (linear warm-up over ``warmup_steps`` updates,
    #: then the inverse square root of the step: the Transformer recipe); see varattn.training.optim
    lr_schedule: str = spec("epoch-halving", rule=one_of("epoch-halving", "inverse-sqrt"))
    warmup_steps: int = spec(4000, rule=positive)
    lr_decay: float = spec(0.5, rule=positive)
    #: halve the learning rate when an epoch's validation is worse than the best of the earlier epochs',
    #: from this epoch on (counted from 1; mid-epoch validations never change the learning rate)
    decay_start_epoch: int = 2
    #: also validate every this many updates (None or 0: only after every epoch); these validations
    #: write best/ and last/ but leave the learning rate alone
    eval_every: int | None = spec(None, rule=non_negative)
    #: this many non-finite updates in a row stop training
    max_bad_steps: int = spec(20, rule=positive)
    #: write resume/ every this many updates (and at every validation); 0/None: at validations only
    save_every: int | None = spec(500, rule=non_negative)
    #: a train record in metrics.jsonl every this many updates
    log_every: int = spec(25, rule=positive)
    #: torch CPU threads (None: torch's default)
    threads: int | None = spec(None, rule=positive)
    #: auto (a CUDA GPU if there is one, else the CPU), cpu, cuda, cuda:N
    device: str = "auto"
    #: fp32, or bf16: products under torch.autocast in bfloat16, losses in float32
    precision: str = spec("fp32", rule=one_of(*PRECISIONS))
    #: data-parallel runs (torchrun): seconds a collective may wait for the other processes before the
    #: job fails instead of hanging
    dist_timeout_s: float = spec(900.0, rule=positive)

    #: keys ``--resume`` may change: they do not alter the numbers of the steps already taken
    RESUMABLE_KEYS: typing.ClassVar[tuple[str, ...]] = (
        "max_steps", "epochs", "max_minutes", "save_every", "threads", "device", "dist_timeout_s")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self):
        """Check every key again (after attributes were set in code); returns the checked copy."""
        return type(self).from_dict(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """Build and check a config from a mapping (unknown keys, bad types and ranges: VarattnError)."""
        return build(cls, d)

    def check(self) -> None:
        """Cross-key checks of a subclass; the per-key checks already ran in :func:`build`."""


def _names(cls) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
            dict: "a mapping"}.get(cls, cls.__name__)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (int, float, str, bool, list[...], dict[...], a dataclass, X | None)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (hint,) = [o for o in options if o is not type(None)]
        origin = typing.get_origin(hint)
    if value is None:
        raise VarattnError(f"{key} must be set")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            value = dataclasses.asdict(value)
        if not isinstance(value, Mapping):
            raise VarattnError(f"{key} must be a mapping of its keys, got {value!r}")
        return build(hint, value, prefix=f"{key}.")
    base = origin or hint
    if base is Any:
        return value
    if base is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise VarattnError(f"{key} must be a number, got {value!r}") from None
    accepted = (int, float) if base is float else (list, tuple) if base is list else (base,)
    if (isinstance(value, bool) and base is not bool) or not isinstance(value, accepted):
        raise VarattnError(f"{key} must be {_names(base)}, got {value!r}")
    if base is float:
        value = float(value)
        if not math.isfinite(value):
            raise VarattnError(f"{key} must be finite, got {value!r}")
    if base is list:
        (item,) = typing.get_args(hint) or (Any,)
        value = [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if base is dict:
        value = dict(value)
    return value


def build(cls: type[C], d: Mapping[str, Any], prefix: str = "", rules: Mapping[str, Rule] | None = None) -> C:
    """An instance of the dataclass ``cls`` from ``d``, every key checked (see the module docstring).

    ``prefix`` names the section in messages (``"model."``); ``rules`` adds range checks by key to
    those declared in the fields' metadata. Missing keys take their defaults.
    """
    if not isinstance(d, Mapping):
        raise VarattnError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, got {d!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        where = f"{prefix.rstrip('.')} " if prefix else ""
        raise VarattnError(f"unknown {where}config keys: {', '.join(map(str, unknown))} (known: "
                           f"{', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in d.items():
        key = f"{prefix}{name}"
        section = fields[name].metadata.get("section")
        value = section(value) if section is not None else _coerce(key, value, hints[name])
        rule = (rules or {}).get(name) or fields[name].metadata.get("rule")
        problem = rule(value) if rule is not None and value is not None else None
        if problem:
            raise VarattnError(f"{key} {problem}, got {value!r}")
        values[name] = value
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check()
    return obj


def checked_model(cls: type[C], d: Any, from_data: tuple[str, ...], rules: Mapping[str, Rule]) -> C:
    """A task's checked ``model:`` section (a mapping, or a ``cls`` in code): every integer size positive, ``rules``
    on top, and the keys ``from_data`` (vocabulary sizes, which the data decides) refused."""
    if isinstance(d, cls):
        d = {k: v for k, v in dataclasses.asdict(d).items() if k not in from_data}
    if not isinstance(d, dict):
        raise VarattnError(f"model must be a mapping of model sizes, got {d!r}")
    sizes = {f.name: positive for f in dataclasses.fields(cls) if f.type in ("int", int)}
    return build(cls, d, prefix="model.", rules={**sizes, **rules, **dict.fromkeys(from_data, _set_from_data)})


def _set_from_data(_value) -> str:
    return "is set from the data, not the config"


def without_data_sizes(cfg, from_data: tuple[str, ...]) -> dict:
    """``cfg`` as a dict (``run.json``'s config) without the ``model:`` keys the data decides."""
    d = dataclasses.asdict(cfg)
    d["model"] = {k: v for k, v in d["model"].items() if k not in from_data}
    return d


def check_options(key: str, schema: Mapping[str, tuple[Any, Rule | None]],
                  options: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``options`` against ``schema``: ``{name: (type hint, range rule or None)}`` (an objective's options).

    Known names, their types (numbers YAML reads as strings become numbers) and ranges. Returns the
    options with numbers coerced. ``key`` names the section (``objective``).
    """
    if not isinstance(options, Mapping):
        raise VarattnError(f"{key} must be a mapping, got {options!r}")
    unknown = sorted(set(options) - set(schema))
    if unknown:
        known = ", ".join(schema) or "none"
        raise VarattnError(f"unknown {key} options: {', '.join(map(str, unknown))} (known: {known})")
    out = {}
    for name, value in options.items():
        hint, rule = schema[name]
        value = _coerce(f"{key}.{name}", value, hint)
        problem = rule(value) if rule is not None and value is not None else None
        if problem:
            raise VarattnError(f"{key}.{name} {problem}, got {value!r}")
        out[name] = value
    return out


# -- YAML files and --set overrides ------------------------------------------------------------------

#: the key of a config file that names its task (``varattn train`` reads it; the task's config never sees it)
TASK_KEY = "task"


def resolve_config_path(name: str, shipped_dir: Path) -> Path:
    """A config path, or the name of a config shipped in ``shipped_dir`` (``toy`` for ``toy.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = shipped_dir / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in shipped_dir.glob("*.yaml")))
    raise VarattnError(f"config not found: {name} (shipped configs: {names})")


def read_config_file(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise VarattnError(f"config {path} is not valid YAML: {exc}") from None
    except OSError as exc:
        raise VarattnError(f"cannot read config {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise VarattnError(f"config {path} must be a mapping")
    return data


def config_data(name: str, shipped_dir: Path, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None, task: str | None = None) -> dict:
    """A config file's mapping (a path, or a name shipped in ``shipped_dir``) with ``overrides``
    (flag values; ``None`` means "not given") and then ``sets`` (``key=value`` strings) applied.

    A file may name its task (``task: vqa``, read by ``varattn train``); the key is checked against
    ``task`` and left out of the mapping.
    """
    path = resolve_config_path(name, shipped_dir)
    data = read_config_file(path)
    named = data.pop(TASK_KEY, None)
    if task is not None and named is not None and named != task:
        raise VarattnError(f"config {path} is for the {named} task ({TASK_KEY}: {named}), not for {task}")
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    for assignment in sets or []:
        apply_override(data, assignment)
    return data


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
    try:
        target[parts[-1]] = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        target[parts[-1]] = value  # not YAML: the key's type check names it
