"""Choosing the device: names, one-line errors for GPUs that are not there, runs that move.

This machine has no GPU; what a GPU would do is checked through ``torch.cuda`` stand-ins
(``is_available``, ``device_count``) only where the code asks PyTorch about the hardware.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from varattn.checkpoint import load_checkpoint
from varattn.cli import main
from varattn.device import resolve_device
from varattn.errors import VarattnError
from varattn.nmt.config import load_config
from varattn.nmt.run import load_run
from varattn.nmt.train import train

TINY = [
    "model.embed_dim=8", "model.encoder_hidden=8", "model.decoder_hidden=16", "model.attention_dim=8",
    "model.output_hidden=16", "model.inference_hidden=8", "synthetic_sizes=[60, 8, 8]", "batch_size=16",
    "valid_batch_size=8", "threads=1",
]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _no_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_auto_is_the_gpu_when_there_is_one(monkeypatch):
    _no_gpu(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(("spec", "needle"), [
    ("gpu", "unknown device 'gpu'"),
    ("cuda:x", "unknown device 'cuda:x'"),
    ("mps", "device 'mps' is not supported"),
    ("cuda", "sees no CUDA GPU"),
    ("cuda:1", "sees no CUDA GPU"),
])
def test_unusable_devices_are_clear_errors(monkeypatch, spec, needle):
    _no_gpu(monkeypatch)
    with pytest.raises(VarattnError, match=needle):
        resolve_device(spec)


def test_a_gpu_index_beyond_the_visible_ones(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(VarattnError, match="only 1 CUDA GPU"):
        resolve_device("cuda:3")


def test_training_on_a_missing_gpu_fails_before_writing_anything(tmp_path, monkeypatch, capsys):
    _no_gpu(monkeypatch)
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--device", "cuda", "--max-steps", "1", "--no-progress",
                 "--no-tensorboard", *sum((["--set", s] for s in TINY), [])])
    assert code == 2
    assert "sees no CUDA GPU" in _one_line_error(capsys.readouterr().err)
    assert not out.exists()


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("device") / "run"
    cfg = load_config("toy", {"mode": "var-sample", "max_steps": 2, "epochs": 100, "device": "cpu"}, TINY)
    train(cfg, run_dir, progress=False, tensorboard=False)
    return run_dir


@pytest.mark.parametrize("argv", [
    ["evaluate", "{run}", "--device", "cuda"],
    ["translate", "{run}", "--device", "cuda:0", "--input", "{src}"],
    ["align", "{run}", "--device", "cuda", "--src", "{src}", "--tgt", "{src}"],
])
def test_commands_on_a_missing_gpu_are_one_line_errors(cpu_run, tmp_path, monkeypatch, capsys, argv):
    _no_gpu(monkeypatch)
    src = tmp_path / "in.txt"
    src.write_text("a b c\n", encoding="utf-8")
    code = main([a.format(run=cpu_run, src=src) for a in argv])
    assert code == 2
    assert "sees no CUDA GPU" in _one_line_error(capsys.readouterr().err)


def test_explicit_cpu_gives_the_same_numbers_as_auto(cpu_run, capsys):
    results = []
    for device in ("auto", "cpu"):
        assert main(["evaluate", str(cpu_run), "--device", device, "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1]
    assert load_run(cpu_run, device="cpu").model.src_embed.weight.device == torch.device("cpu")


def test_the_device_may_change_on_resume(tmp_path):
    """``device`` is a resumable key: a run may move between machines (here: auto -> cpu, the same)."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(load_config("toy", {"mode": "var-sample", "max_steps": 4, "epochs": 100}, TINY), whole,
          progress=False, tensorboard=False)
    train(load_config("toy", {"mode": "var-sample", "max_steps": 2, "epochs": 100}, TINY), split,
          progress=False, tensorboard=False)
    assert main(["train", "--resume", str(split), "--max-steps", "4", "--device", "cpu", "--no-progress",
                 "--no-tensorboard"]) == 0
    assert json.loads((split / "run.json").read_text(encoding="utf-8"))["config"]["device"] == "cpu"
    (a, _), (b, _) = load_checkpoint(whole / "last"), load_checkpoint(split / "last")
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
