"""Checkpoint storage: exact round trips, corruption detection, pickle refusal and crash safety."""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from varattn import checkpoint as ckpt
from varattn.checkpoint import (
    atomic_write_bytes,
    atomic_write_text,
    backup_path,
    flatten_state,
    load_checkpoint,
    load_json,
    recover,
    save_checkpoint,
    save_json,
    unflatten_state,
)
from varattn.errors import VarattnError

# --------------------------------------------------------------------------------------------------
# helpers


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (so NaN payloads and -0.0 count)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def deep_equal(a, b) -> bool:
    """Structural equality that also checks types (tuple != list, int != float, numpy dtypes)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return same_bits(a, b) and a.requires_grad == b.requires_grad
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(type(k1) is type(k2) and deep_equal(a[k1], b[k2]) for k1, k2 in zip(a, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b))
    return a == b


def through_json(skeleton):
    return json.loads(json.dumps(skeleton))


def sample_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=gen)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-40])
    shared = torch.arange(10, dtype=torch.int64)
    return {
        "float32": base,
        "float64": base.double(),
        "float16": base.half(),
        "bfloat16": base.to(torch.bfloat16),
        "special": special,
        "int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "uint8": torch.tensor([0, 255], dtype=torch.uint8),
        "int16": torch.tensor([-(2**15), 2**15 - 1], dtype=torch.int16),
        "int32": torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32),
        "int64": torch.tensor([-(2**63), 2**63 - 1, 12345678901234], dtype=torch.int64),
        "bool": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 3),
        "transposed": base.t(),  # not contiguous
        "shared": shared,
        "shared_view": shared[2:5],  # shares storage with "shared"
        "param": torch.nn.Parameter(torch.ones(2)),
    }


# --------------------------------------------------------------------------------------------------
# round trips


def test_round_trip_is_bit_identical(tmp_path):
    tensors = sample_tensors()
    meta = {"step": 7, "name": "ünïcode ✓", "nested": {"list": [1, 2.5, None, True]}, "lr": 1e-3}
    target = tmp_path / "ck"
    assert save_checkpoint(target, tensors, meta) == target
    loaded, loaded_meta = load_checkpoint(target)
    assert loaded_meta == meta
    assert list(loaded) == list(tensors)  # order kept
    for name, tensor in tensors.items():
        assert same_bits(loaded[name], tensor.detach()), name
    # loaded tensors are independent and writable
    loaded["float32"].add_(1)
    assert same_bits(tensors["float32"], sample_tensors()["float32"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert sorted(p.name for p in target.iterdir()) == ["meta.json", "weights.safetensors"]
    record = json.loads((target / "meta.json").read_text())
    assert record["format"] == "varattn-checkpoint-1"
    assert len(record["weights_sha256"]) == 64


def test_a_header_length_starting_with_the_pickle_byte_is_still_safetensors(tmp_path):
    # safetensors files start with the header length (u64, little-endian); when its low byte is 0x80 --
    # the first byte of a pickle -- the file must still load. Find a tensor name giving such a header.
    for n in range(1, 600):
        target = tmp_path / f"ck{n}"
        tensors = {"w" * n: torch.arange(3.0)}
        save_checkpoint(target, tensors, {"n": n})
        if (target / "weights.safetensors").read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no tensor name gave a header length with low byte 0x80")
    loaded, meta = load_checkpoint(target)
    assert meta == {"n": n} and same_bits(loaded["w" * n], torch.arange(3.0))


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_files_follow_the_umask_in_effect_when_written(tmp_path):
    old = os.umask(0o027)  # not the one at import time: nothing may be cached then
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_overwrite_replaces_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "ck"
    save_checkpoint(target, {"x": torch.zeros(3)}, {"v": 1})
    save_checkpoint(target, {"y": torch.ones(2, dtype=torch.int64)}, {"v": 2})
    loaded, meta = load_checkpoint(target)
    assert meta == {"v": 2} and list(loaded) == ["y"]
    assert torch.equal(loaded["y"], torch.ones(2, dtype=torch.int64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "ck", {"x": torch.zeros(1)}, {"bad": object()})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "ck", {"x": [1, 2]}, {})
    assert not (tmp_path / "ck").exists()
    with pytest.raises(VarattnError, match="does not exist"):
        save_checkpoint(tmp_path / "missing" / "ck", {"x": torch.zeros(1)}, {})
    (tmp_path / "file").write_text("x")
    with pytest.raises(VarattnError, match="file"):
        save_checkpoint(tmp_path / "file", {"x": torch.zeros(1)}, {})


def test_flatten_unflatten_exact():
    t = torch.arange(6.0).reshape(2, 3)
    state = {
        0: {"step": torch.tensor(3.0), "same": t, "again": t},
        "s": ["a", ("b", 1, 2.0, -0.0, float("nan"), float("inf")), None, True, False],
        (1, "k"): 2**100,
        2.5: b"\x00\xffbytes",
        None: [],
        "empty": (),
        "np": np.arange(12, dtype=">i4").reshape(3, 4),  # big-endian kept
        "npf": np.array([[1.5, np.nan]], dtype=np.float16),
        "npb": np.array([True, False]),
        "scalars": (np.float32(1.25), np.int64(-3), np.bool_(True), np.float64(2.0)),
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
    assert restored["np"].dtype == np.dtype(">i4")


def test_flatten_rejects_unsupported_values():
    with pytest.raises(TypeError, match="set"):
        flatten_state({"a": {1, 2}})
    with pytest.raises(TypeError, match="key"):
        flatten_state({frozenset(): 1})
    with pytest.raises(TypeError, match="object"):
        flatten_state({"a": np.array([object()])})


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
        x = torch.randn(3, 4) + random.random() + float(np.random.rand())
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_optimizer_and_rng_states_resume_bit_identically(tmp_path):
    random.seed(1)
    np.random.seed(2)
    model, opt = _tiny_setup(3)
    _train(model, opt, 4)

    training_state = {
        "optimizer": copy.deepcopy(opt.state_dict()),  # the live state keeps changing below
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(),
    }
    state_tensors, skeleton = flatten_state(training_state, prefix="state/")
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()} | state_tensors
    save_checkpoint(tmp_path / "ck", tensors, {"state": skeleton, "step": 4})

    # the original run continues
    expected_losses = _train(model, opt, 5)
    expected_params = [p.detach().clone() for p in model.parameters()]

    # scramble everything, then resume from the checkpoint in a fresh model/optimizer
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    loaded, meta = load_checkpoint(tmp_path / "ck")
    restored = unflatten_state(loaded, meta["state"])
    assert deep_equal(restored["optimizer"], training_state["optimizer"])
    assert list(restored["optimizer"]["state"]) == [0, 1, 2, 3]  # int keys stay ints
    assert restored["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.95)
    assert deep_equal(restored["python_rng"], training_state["python_rng"])
    assert deep_equal(restored["numpy_rng"], training_state["numpy_rng"])

    model2, opt2 = _tiny_setup(42)
    model2.load_state_dict({k.removeprefix("model/"): v for k, v in loaded.items() if k.startswith("model/")})
    opt2.load_state_dict(restored["optimizer"])
    torch.set_rng_state(restored["torch_rng"])
    random.setstate(restored["python_rng"])
    np.random.set_state(restored["numpy_rng"])
    resumed_losses = _train(model2, opt2, 5)

    assert resumed_losses == expected_losses
    for p, q in zip(model2.parameters(), expected_params):
        assert same_bits(p.detach(), q)


# --------------------------------------------------------------------------------------------------
# corruption and missing files


@pytest.fixture
def saved(tmp_path) -> Path:
    target = tmp_path / "ck"
    save_checkpoint(target, {"w": torch.randn(64, 64), "b": torch.arange(64)}, {"step": 1})
    return target


def test_missing_checkpoint(tmp_path):
    with pytest.raises(VarattnError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(VarattnError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "emptydir")


def test_missing_meta(saved):
    (saved / "meta.json").unlink()
    with pytest.raises(VarattnError, match="meta.json"):
        load_checkpoint(saved)


def test_truncated_weights(saved):
    weights = saved / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(VarattnError, match="corrupted"):
        load_checkpoint(saved)


def test_truncated_weights_with_matching_hash_fails_to_parse(saved):
    """Even if meta.json agrees with a truncated file, the safetensors parser error is reported cleanly."""
    import hashlib

    weights = saved / "weights.safetensors"
    data = weights.read_bytes()[:200]
    weights.write_bytes(data)
    record = json.loads((saved / "meta.json").read_text())
    record["weights_sha256"] = hashlib.sha256(data).hexdigest()
    record["weights_bytes"] = len(data)
    (saved / "meta.json").write_text(json.dumps(record))
    with pytest.raises(VarattnError, match="corrupted.*safetensors"):
        load_checkpoint(saved)


def test_flipped_byte(saved):
    weights = saved / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(VarattnError, match="corrupted.*sha256"):
        load_checkpoint(saved)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"format": "other-1", "meta": {}}', "not a varattn checkpoint"),
        (b"[1, 2]", "not a varattn checkpoint"),
        (b'{"format": "varattn-checkpoint-1"}', "corrupted"),
    ],
)
def test_bad_meta(saved, content, match):
    (saved / "meta.json").write_bytes(content)
    with pytest.raises(VarattnError, match=match) as info:
        load_checkpoint(saved)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# pickles are refused and never executed


class _Payload:
    """Unpickling this object opens (creates) the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _forbidden(*args, **kwargs):
    raise AssertionError("checkpoint code must never unpickle")


def test_payload_is_live(tmp_path):
    """Sanity check of the test itself: unpickling the payload really creates the marker."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_Payload(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("how", ["pickle", "pickle_protocol_0", "torch_zip", "torch_legacy"])
@pytest.mark.parametrize("where", ["renamed_weights", "pt_path"])
def test_pickled_checkpoints_are_refused(tmp_path, saved, how, where):
    marker = tmp_path / "marker"
    payload = _Payload(marker)
    target = saved / "weights.safetensors" if where == "renamed_weights" else tmp_path / "model.pt"
    if how == "pickle":
        target.write_bytes(pickle.dumps(payload))
    elif how == "pickle_protocol_0":
        target.write_bytes(pickle.dumps(payload, protocol=0))
    elif how == "torch_zip":
        torch.save({"model": payload}, target)
    else:
        torch.save({"model": payload}, target, _use_new_zipfile_serialization=False)
    assert not marker.exists()

    with pytest.MonkeyPatch.context() as mp:
        for mod, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
            mp.setattr(mod, name, _forbidden)
        with pytest.raises(VarattnError) as info:
            load_checkpoint(saved if where == "renamed_weights" else target)
    message = str(info.value)
    if how == "pickle_protocol_0" and where == "renamed_weights":
        assert "corrupted" in message  # no magic bytes, but the hash/safetensors checks stop it
    elif how == "pickle_protocol_0":
        assert "is a file" in message
    else:
        assert "refused for safety" in message and str(target) in message
    assert "\n" not in message
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# crash safety


def test_recover_from_crash_between_renames(tmp_path):
    target = tmp_path / "ck"
    save_checkpoint(target, {"x": torch.full((4,), 1.0)}, {"v": 1})
    os.rename(target, backup_path(target))  # state after "old -> backup", before "new -> target"
    assert not target.exists()
    tensors, meta = load_checkpoint(target)
    assert meta == {"v": 1} and torch.equal(tensors["x"], torch.full((4,), 1.0))
    assert target.is_dir() and not backup_path(target).exists()  # moved back into place


def test_simulated_crash_inside_save_keeps_old_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "ck"
    save_checkpoint(target, {"x": torch.zeros(2)}, {"v": 1})

    class Crash(BaseException):
        pass

    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:
            raise Crash
        real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename)
    with pytest.raises(Crash):
        save_checkpoint(target, {"x": torch.ones(2)}, {"v": 2})
    monkeypatch.setattr(ckpt.os, "rename", real_rename)
    assert calls[0] == ("ck", ".bak-ck")
    assert not target.exists() and backup_path(target).is_dir()

    _, meta = load_checkpoint(target)
    assert meta == {"v": 1}
    save_checkpoint(target, {"x": torch.ones(2)}, {"v": 3})
    assert load_checkpoint(target)[1] == {"v": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_save_after_crash_with_only_backup_does_not_lose_it(tmp_path):
    target = tmp_path / "ck"
    save_checkpoint(target, {"x": torch.zeros(2)}, {"v": 1})
    os.rename(target, backup_path(target))
    save_checkpoint(target, {"x": torch.ones(2)}, {"v": 2})
    assert load_checkpoint(target)[1] == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_stale_backup_and_dead_tmp_are_cleaned(tmp_path):
    target = tmp_path / "ck"
    save_checkpoint(target, {"x": torch.zeros(2)}, {"v": 1})
    # a crash while deleting the backup: target is complete, a partial backup remains
    backup_path(target).mkdir()
    (backup_path(target) / "weights.safetensors").write_bytes(b"partial")
    # a build directory of a process that died
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_tmp = tmp_path / f".tmp-ck-{int(dead.stdout)}"
    dead_tmp.mkdir()
    assert load_checkpoint(target)[1] == {"v": 1}
    assert recover(target) == target
    assert not dead_tmp.exists()
    save_checkpoint(target, {"x": torch.ones(2)}, {"v": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


_WRITER = textwrap.dedent(
    """
    import sys
    import torch
    from varattn.checkpoint import save_checkpoint

    target, start = sys.argv[1], int(sys.argv[2])
    print("started", flush=True)
    i = start
    while True:
        tensors = {
            "a": torch.full((1 << 22,), float(i)),
            "b": torch.full((1 << 20,), i, dtype=torch.int64),
            "c": torch.full((7,), i % 2 == 0),
        }
        save_checkpoint(target, tensors, {"i": i})
        if i == start:
            print("saved", flush=True)
        i += 1
    """
)


def _check_consistent(target: Path) -> int:
    tensors, meta = load_checkpoint(target)
    i = meta["i"]
    assert torch.equal(tensors["a"], torch.full((1 << 22,), float(i)))
    assert torch.equal(tensors["b"], torch.full((1 << 20,), i, dtype=torch.int64))
    assert torch.equal(tensors["c"], torch.full((7,), i % 2 == 0))
    return i


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_repeated_saves_leaves_loadable_checkpoint(tmp_path):
    rng = random.Random(1234)
    target = tmp_path / "ck"
    last = -1
    delays = []
    for round_no in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(target), str(1000 * round_no)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for = "saved" if round_no == 0 else "started"
            while (line := proc.stdout.readline()) and line.strip() != wait_for:
                pass
            assert line.strip() == wait_for, f"writer exited early (rc={proc.poll()})"
            delay = rng.uniform(0.0, 0.3)
            delays.append(delay)
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        i = _check_consistent(target)  # raises if the checkpoint is missing, torn or corrupted
        assert i >= last, (delays, i, last)
        last = i
    save_checkpoint(target, {"x": torch.zeros(1)}, {"i": -1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # dead writers' leftovers are gone


# --------------------------------------------------------------------------------------------------
# single files


def test_atomic_write_and_json(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "hello ✓")
    assert path.read_text(encoding="utf-8") == "hello ✓"
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    obj = {"a": [1, 2.5, None], "b": "ü"}
    save_json(tmp_path / "x.json", obj)
    assert load_json(tmp_path / "x.json") == obj
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt", "x.json"]


def test_atomic_write_failure_keeps_old_content(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.os, "replace", broken_replace)
    with pytest.raises(VarattnError, match="cannot write .*f.txt"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # temporary file removed


def test_json_errors(tmp_path):
    with pytest.raises(VarattnError, match="file not found"):
        load_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,,}')
    with pytest.raises(VarattnError, match=r"bad\.json is not valid JSON \(line 1"):
        load_json(bad)
    with pytest.raises(VarattnError, match="directory"):
        load_json(tmp_path)
    with pytest.raises(TypeError, match="JSON"):
        save_json(tmp_path / "o.json", {"x": object()})
    assert not (tmp_path / "o.json").exists()
    with pytest.raises(VarattnError, match="cannot write"):
        save_json(tmp_path / "no" / "dir.json", {})
