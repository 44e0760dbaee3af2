"""The option schema of an objective: names, types, defaults and ranges, declared by the objective class.

An objective's options are its constructor's keyword parameters: the signature gives the names and
defaults, the annotations the types, and the class's ``option_rules`` the ranges (a rule returns what
is wrong with a value, or None). ``option_schema(cls)`` puts them together; ``varattn.objective_options``
checks every task's ``objective:`` section against it, so a new objective declares its options in one
place, its class.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from varattn.errors import VarattnError

#: a range check: what is wrong with a value ("must be positive"), or None
Rule = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Option:
    """One option of an objective: its type annotation, default and range rule (None: any value of the type)."""

    name: str
    type: Any
    default: Any
    rule: Rule | None = None


def positive(value) -> str | None:
    """A number above 0."""
    return None if value > 0 else "must be a positive integer" if isinstance(value, int) else "must be positive"


def non_negative(value) -> str | None:
    """A number at least 0."""
    if value >= 0:
        return None
    return "must be a non-negative integer" if isinstance(value, int) else "must be non-negative"


def one_of(*choices: str) -> Rule:
    """One of ``choices``."""
    def check(value) -> str | None:
        return None if value in choices else f"must be {' or '.join(choices)}"
    return check


def increasing_pair(value) -> str | None:
    """Two numbers ``0 < low < high``."""
    ok = len(value) == 2 and 0 < value[0] < value[1]
    return None if ok else "must be two numbers 0 < low < high"


def option_schema(cls: type) -> dict[str, Option]:
    """``{name: Option}`` of ``cls``'s constructor keyword parameters, with the rules of ``cls.option_rules``.

    A parameter without an annotation takes its default's type; a rule naming no parameter is an error
    (a misspelt rule must not go unchecked).
    """
    init = cls.__init__
    if init is object.__init__:
        params, hints = {}, {}
    else:
        params = {n: p for n, p in inspect.signature(init).parameters.items()
                  if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        hints = typing.get_type_hints(init)
    rules: dict[str, Rule] = getattr(cls, "option_rules", {})
    stray = sorted(set(rules) - set(params))
    if stray:
        raise VarattnError(f"{cls.__name__}.option_rules names no option: {', '.join(stray)}")
    schema = {}
    for name, param in params.items():
        default = None if param.default is inspect.Parameter.empty else param.default
        hint = hints.get(name, Any if default is None else type(default))
        schema[name] = Option(name, hint, default, rules.get(name))
    return schema
