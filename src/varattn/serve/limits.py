"""What a request to ``varattn serve`` may ask for, and the checks of its fields.

Every number a client sends is checked here before a model sees it; a bad one is a :class:`BadRequest`,
which the application answers with its status and ``{"error": "..."}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class BadRequest(Exception):
    """A request the server refuses: ``status`` (4xx or 503) and a one-line ``message`` for the client."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Limits:
    """The bounds of what one request may ask (``varattn serve`` flags change the first ones).

    Attributes:
        max_chars: characters of a sentence or a question.
        max_tokens: pieces of a sentence after segmentation (source, reference or given pieces).
        max_upload_bytes: bytes of a request body (an uploaded image with its form).
        max_image_pixels: width x height of an uploaded image, checked before it is decoded.
        concurrency: requests computed at once; the others wait their turn.
        max_queue: requests waiting at once; one more is refused with 503.
        max_beam, max_topk, max_alternatives: the largest beam, K-max and number of alternatives per token.
        examples: validation pairs or test images offered per run.
    """

    max_chars: int = 1000
    max_tokens: int = 100
    max_upload_bytes: int = 2 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    concurrency: int = 1
    max_queue: int = 16
    max_beam: int = 20
    max_topk: int = 50
    max_alternatives: int = 10
    examples: int = 48

    def __post_init__(self):
        for name in ("max_chars", "max_tokens", "max_upload_bytes", "max_image_pixels", "concurrency", "max_beam",
                     "max_topk", "max_alternatives"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queue < 0 or self.examples < 0:
            raise ValueError("max_queue and examples must not be negative")


_MISSING = object()
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}


def field(body: dict, name: str, kind: type, default: Any = _MISSING, *, low: float | None = None,
          high: float | None = None, choices: tuple | None = None, nullable: bool = False) -> Any:
    """``body[name]``, checked: of ``kind`` (an int is a float too, a bool is neither), within ``[low, high]``,
    one of ``choices``; ``default`` when absent (or null, with ``nullable``); a :class:`BadRequest` otherwise."""
    value = body.get(name, _MISSING)
    if value is None and nullable:
        return None if default is _MISSING else default
    if value is _MISSING:
        if default is _MISSING:
            raise BadRequest(f"missing field {name!r}")
        return default
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok or (kind is float and not math.isfinite(value)):
        raise BadRequest(f"field {name!r} must be {_TYPE_NAMES.get(kind, kind.__name__)}"
                         f"{' or null' if nullable else ''}, got {_short(value)}")
    if low is not None and value < low or high is not None and value > high:
        span = f"between {low:g} and {high:g}" if low is not None and high is not None else (
            f"at least {low:g}" if low is not None else f"at most {high:g}")
        raise BadRequest(f"field {name!r} must be {span}, got {value!r}")
    if choices is not None and value not in choices:
        raise BadRequest(f"field {name!r} must be one of {', '.join(map(str, choices))}, got {_short(value)}")
    return value


def text_field(body: dict, name: str, limits: Limits, default: Any = _MISSING, *, empty: bool = False) -> Any:
    """A sentence or question: a string of at most ``limits.max_chars`` characters, not blank unless ``empty``."""
    value = field(body, name, str, default, nullable=default is None)
    if value is None:
        return None
    if len(value) > limits.max_chars:
        raise BadRequest(f"field {name!r} has {len(value)} characters; the limit is {limits.max_chars}", 413)
    if "\x00" in value:
        raise BadRequest(f"field {name!r} contains a NUL character")
    if not empty and not value.strip():
        raise BadRequest(f"field {name!r} is empty")
    return value


def pieces_field(body: dict, name: str, limits: Limits) -> list[str] | None:
    """A list of pieces (strings without whitespace), at most ``limits.max_tokens``; None when absent."""
    value = field(body, name, list, None, nullable=True)
    if value is None:
        return None
    if not value:
        raise BadRequest(f"field {name!r} is empty")
    check_length(len(value), name, limits)
    for piece in value:
        if not isinstance(piece, str) or not piece or any(c.isspace() for c in piece) or len(piece) > limits.max_chars:
            raise BadRequest(f"field {name!r} must be a list of pieces (non-empty strings without spaces)")
    return value


def check_length(count: int, what: str, limits: Limits) -> None:
    if count > limits.max_tokens:
        raise BadRequest(f"{what} has {count} tokens; the limit is {limits.max_tokens}", 413)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
