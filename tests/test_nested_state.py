"""The nested-state serialiser of resume/: exact round trips of Adam's and torch's RNG states, refusals."""

from __future__ import annotations

import copy
import json
import math
import random

import numpy as np
import pytest
import torch

from varattn.checkpoint import load_checkpoint, save_checkpoint
from varattn.errors import VarattnError
from varattn.training.nested_state import flatten_state, unflatten_state


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (so NaN payloads and -0.0 count)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def deep_equal(a, b) -> bool:
    """Structural equality that also checks types (tuple != list, int != float)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return same_bits(a, b) and a.requires_grad == b.requires_grad
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(type(k1) is type(k2) and deep_equal(a[k1], b[k2]) for k1, k2 in zip(a, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b))
    return a == b


def through_json(skeleton):
    return json.loads(json.dumps(skeleton))


def test_flatten_unflatten_exact():
    t = torch.arange(6.0).reshape(2, 3)
    state = {
        0: {"step": torch.tensor(3.0), "same": t, "again": t},
        "s": ["a", ("b", 1, 2.0, -0.0, float("nan"), float("inf")), None, True, False],
        (1, "k"): 2**100,
        2.5: "x",
        None: [],
        "empty": (),
        "param": torch.nn.Parameter(torch.ones(2)),
        "grad": torch.zeros(2, requires_grad=True),
        "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "nested": [[{"x": [(1,)]}]],
    }
    tensors, skeleton = flatten_state(state, prefix="opt/")
    assert all(name.startswith("opt/") for name in tensors)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    restored = unflatten_state(tensors, through_json(skeleton))
    assert deep_equal(restored, state)
    assert restored[0]["same"] is restored[0]["again"]  # one tensor object stays one object
    assert isinstance(restored["param"], torch.nn.Parameter)


def test_flatten_rejects_unsupported_values():
    with pytest.raises(TypeError, match="set"):
        flatten_state({"a": {1, 2}})
    with pytest.raises(TypeError, match="key"):
        flatten_state({frozenset(): 1})
    with pytest.raises(TypeError, match="bytes"):
        flatten_state({"a": b"raw"})  # nothing in a training state is bytes or numpy
    with pytest.raises(TypeError, match="ndarray"):
        flatten_state({"a": np.zeros(2)})


def test_unflatten_rejects_inconsistent_skeleton():
    tensors, skeleton = flatten_state({"w": torch.zeros(2)})
    with pytest.raises(VarattnError, match="missing tensor"):
        unflatten_state({}, skeleton)
    with pytest.raises(VarattnError):
        unflatten_state(tensors, {"root": 1})
    with pytest.raises(VarattnError, match="unknown node"):
        unflatten_state(tensors, {"varattn_state": 1, "root": {"type": "evil"}})


def _tiny_setup(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05, betas=(0.8, 0.95), weight_decay=0.01)
    return model, opt


def _train(model, opt, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        x = torch.randn(3, 4) + random.random()
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_optimizer_and_rng_states_resume_bit_identically(tmp_path):
    random.seed(1)
    model, opt = _tiny_setup(3)
    _train(model, opt, 4)

    training_state = {
        "optimizer": copy.deepcopy(opt.state_dict()),  # the live state keeps changing below
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }
    state_tensors, skeleton = flatten_state(training_state, prefix="state/")
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()} | state_tensors
    save_checkpoint(tmp_path / "ck", tensors, {"state": skeleton, "step": 4})

    # the original run continues
    expected_losses = _train(model, opt, 5)
    expected_params = [p.detach().clone() for p in model.parameters()]

    # scramble everything, then resume from the checkpoint in a fresh model/optimizer
    random.seed(99)
    torch.manual_seed(99)
    loaded, meta = load_checkpoint(tmp_path / "ck")
    restored = unflatten_state(loaded, meta["state"])
    assert deep_equal(restored["optimizer"], training_state["optimizer"])
    assert list(restored["optimizer"]["state"]) == [0, 1, 2, 3]  # int keys stay ints
    assert restored["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.95)
    assert deep_equal(restored["python_rng"], training_state["python_rng"])

    model2, opt2 = _tiny_setup(42)
    model2.load_state_dict({k.removeprefix("model/"): v for k, v in loaded.items() if k.startswith("model/")})
    opt2.load_state_dict(restored["optimizer"])
    torch.set_rng_state(restored["torch_rng"])
    random.setstate(restored["python_rng"])
    resumed_losses = _train(model2, opt2, 5)

    assert resumed_losses == expected_losses
    for p, q in zip(model2.parameters(), expected_params):
        assert same_bits(p.detach(), q)
