"""The ``objective:`` section of a task's config, read the same way by every task (nmt, vqa).

The section holds options of the trained mode's objective (``num_samples``, ``temperature``, ...)
and, under a key named after a mode, options for that mode alone (``var-relaxed: {warmup_steps: 900}``),
so one config serves every mode (``varattn.latent.mode_options``). Every per-mode section is checked
against its own mode, so a typo in a mode that is not trained is still an error.

What is checked (names, types, ranges) is what each objective class declares
(``Objective.option_schema``: its constructor's signature and ``option_rules``); nothing here knows
any objective's options.

It sits between the tasks and the training core in the layers (docs/architecture.md): it needs the
core's option checks and the latent registry, and both tasks import it.
"""

from __future__ import annotations

from typing import Any

from varattn.errors import VarattnError
from varattn.latent import mode_names, mode_options, objective_class
from varattn.training.config import check_options


def _check(key: str, mode: str, options: Any) -> dict[str, Any]:
    """``options`` checked against mode ``mode``'s declared schema; ``key`` names the section in messages."""
    schema = {name: (opt.type, opt.rule) for name, opt in objective_class(mode).option_schema().items()}
    return check_options(key, schema, options)


def objective_section(mode: str, options: Any) -> dict[str, Any]:
    """The checked options in effect for ``mode``, from an ``objective:`` section.

    Shared keys win over the mode's own section (``--set objective.warmup_steps=0`` overrides a
    shipped config's ``var-relaxed:`` section). Bad names, types or ranges are ``VarattnError``.
    """
    if not isinstance(options, dict):
        raise VarattnError(f"objective must be a mapping, got {options!r}")
    for name in mode_names():
        if name in options:
            section = options[name]
            if not isinstance(section, dict):
                raise VarattnError(f"objective.{name} must be a mapping of that mode's options, got {section!r}")
            _check(f"objective.{name}", name, section)
    return _check("objective", mode, mode_options(mode, options))
