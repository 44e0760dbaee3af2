"""Checkpoint directories: exact round trips, corruption detection, pickle refusal and crash safety."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from varattn import checkpoint as ckpt
from varattn.checkpoint import backup_path, load_checkpoint, recover, save_checkpoint
from varattn.errors import VarattnError
from varattn.fileio import atomic_write_text

# --------------------------------------------------------------------------------------------------
# helpers


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (so NaN payloads and -0.0 count)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))



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
