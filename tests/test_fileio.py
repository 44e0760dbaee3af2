"""Atomic single files and JSON with one-line errors (varattn.fileio)."""

from __future__ import annotations

import os

import pytest

from varattn import fileio
from varattn.errors import VarattnError
from varattn.fileio import atomic_write_bytes, atomic_write_text, load_json, save_json


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

    monkeypatch.setattr(fileio.os, "replace", broken_replace)
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


def test_staged_directory_is_all_or_nothing(tmp_path):
    out = tmp_path / "data" / "corpus"
    with fileio.staged_directory(out) as work:
        assert work.parent == out.parent and work.name.startswith(".corpus.") and not out.exists()
        (work / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a" and list(out.parent.iterdir()) == [out]

    failed = tmp_path / "failed"
    failed.mkdir()  # an empty directory may be the target; it must be left as it was on failure
    with pytest.raises(KeyboardInterrupt), fileio.staged_directory(failed) as work:
        (work / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert failed.is_dir() and not any(failed.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "failed"]  # no staging directory left

    with pytest.raises(VarattnError, match="not an empty directory"), fileio.staged_directory(out):
        pass
    assert (out / "a.txt").read_text() == "a"


def test_staged_directory_keeps_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with fileio.staged_directory(tmp_path / "out"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
