"""Nested training state (Adam's ``state_dict``, torch's RNG states) as tensors plus a JSON skeleton.

:func:`flatten_state` splits a structure of dicts, lists, tuples, numbers, strings and tensors into the
tensors (stored in a checkpoint's ``weights.safetensors``) and a JSON-able skeleton (stored in its
``meta.json``); :func:`unflatten_state` rebuilds it exactly, dict keys with their Python types (Adam's
``int`` parameter ids stay ints). ``resume/`` (:mod:`varattn.training.state`) is its only user.

Skeleton grammar: None / bool / int / float / str are stored as themselves (JSON keeps int vs float
apart, and Python's json module writes NaN/Infinity); every other value is a JSON object with a
``"type"`` key::

    {"type": "dict", "items": [[key_skeleton, value_skeleton], ...]}   (keys keep their Python type)
    {"type": "list" | "tuple", "items": [...]}
    {"type": "tensor", "key": NAME, ["param": true], ["requires_grad": true]}

Plain Python dictionaries never appear raw in a skeleton, so a JSON object is always one of these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from varattn.errors import VarattnError

_SKELETON_VERSION = 1


def _safe_key(path: list[str]) -> str:
    return "/".join(path) if path else "value"


def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a nested structure into safetensors-compatible tensors and a JSON-able skeleton.

    ``obj`` may nest dicts (keys: str, int, float, bool, None or tuples of these), lists, tuples,
    None, bool, int, float, str and torch tensors -- e.g. ``optimizer.state_dict()`` or
    ``torch.get_rng_state()``. Tensors are returned under names ``prefix + path`` (path components
    joined by ``/``). The same tensor object appearing twice is stored once and comes back as one
    object. Unsupported values raise :class:`TypeError` naming their position.
    """
    tensors: dict[str, torch.Tensor] = {}
    by_id: dict[int, str] = {}

    def new_name(path: list[str]) -> str:
        base = prefix + _safe_key(path)
        name, n = base, 1
        while name in tensors:
            name = f"{base}#{n}"
            n += 1
        return name

    def key_skel(key: Any, where: str) -> Any:
        if key is None or type(key) in (bool, int, float, str):
            return key
        if type(key) is tuple:
            return {"type": "tuple", "items": [key_skel(k, where) for k in key]}
        raise TypeError(f"cannot store dictionary key {key!r} ({type(key).__name__}) at {where}")

    def walk(value: Any, path: list[str]) -> Any:
        where = _safe_key(path)
        if value is None or type(value) in (bool, int, float, str):
            return value
        if isinstance(value, torch.Tensor):
            if id(value) in by_id:
                return {"type": "tensor", "key": by_id[id(value)]}
            name = new_name(path)
            t = value.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            tensors[name] = t
            by_id[id(value)] = name
            node: dict[str, Any] = {"type": "tensor", "key": name}
            if isinstance(value, torch.nn.Parameter):
                node["param"] = True
            if value.requires_grad:
                node["requires_grad"] = True
            return node
        if type(value) is dict:
            items = []
            for k, v in value.items():
                items.append([key_skel(k, where), walk(v, [*path, str(k)])])
            return {"type": "dict", "items": items}
        if type(value) in (list, tuple):
            kind = "list" if type(value) is list else "tuple"
            return {"type": kind, "items": [walk(v, [*path, str(i)]) for i, v in enumerate(value)]}
        raise TypeError(f"cannot store value of type {type(value).__name__} at {where}")

    skeleton = {"varattn_state": _SKELETON_VERSION, "root": walk(obj, [])}
    return tensors, skeleton


def unflatten_state(tensors: Mapping[str, torch.Tensor], skeleton: Any) -> Any:
    """Rebuild the structure given to :func:`flatten_state` from its tensors and skeleton.

    Dict keys keep their types (int keys stay ints) and tuples stay tuples. A skeleton that does not
    fit the tensors (a missing tensor, an unknown node) raises :class:`~varattn.errors.VarattnError`.
    """

    def bad(msg: str) -> VarattnError:
        return VarattnError(f"saved state is inconsistent: {msg}")

    if not isinstance(skeleton, dict) or skeleton.get("varattn_state") != _SKELETON_VERSION:
        raise bad("not a varattn state skeleton")
    restored: dict[str, torch.Tensor] = {}

    def tensor(name: Any) -> torch.Tensor:
        if not isinstance(name, str) or name not in tensors:
            raise bad(f"missing tensor {name!r}")
        return tensors[name]

    def key_of(node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, dict) and node.get("type") == "tuple" and isinstance(node.get("items"), list):
            return tuple(key_of(k) for k in node["items"])
        raise bad(f"bad dictionary key {node!r}")

    def build(node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if not isinstance(node, dict):
            raise bad(f"unexpected node {node!r}")
        kind = node.get("type")
        if kind in ("dict", "list", "tuple"):
            items = node.get("items")
            if not isinstance(items, list):
                raise bad(f"{kind} node without items")
            if kind == "list":
                return [build(v) for v in items]
            if kind == "tuple":
                return tuple(build(v) for v in items)
            out = {}
            for pair in items:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise bad(f"bad dictionary item {pair!r}")
                out[key_of(pair[0])] = build(pair[1])
            return out
        if kind == "tensor":
            name = node.get("key")
            if name in restored:
                return restored[name]
            t = tensor(name)
            if node.get("param"):
                t = torch.nn.Parameter(t, requires_grad=bool(node.get("requires_grad")))
            elif node.get("requires_grad"):
                t = t.requires_grad_(True)
            restored[name] = t
            return t
        raise bad(f"unknown node type {kind!r}")

    return build(skeleton.get("root"))


__all__ = ["flatten_state", "unflatten_state"]
