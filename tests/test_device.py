"""Choosing the device and the precision: names, one-line errors, runs that move, bf16 autocast.

This machine has no GPU; what a GPU would do is checked through ``torch.cuda`` stand-ins
(``is_available``, ``device_count``) only where the code asks PyTorch about the hardware.
bf16 autocast is checked on the CPU, where ``torch.autocast("cpu")`` takes the same code path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from varattn.checkpoint import load_checkpoint
from varattn.cli import main
from varattn.device import bf16_supported, resolve_device
from varattn.errors import VarattnError
from varattn.latent import make_objective, mode_names
from varattn.nmt.config import load_config
from varattn.nmt.data import encode_pairs, synthetic_pairs
from varattn.nmt.model import LatentAlignmentNMT
from varattn.nmt.run import load_run
from varattn.nmt.train import train
from varattn.nmt.vocab import Vocab

from conftest import SMALL, one_line_error, set_flags

pytestmark = pytest.mark.usefixtures("restore_threads")


def _no_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


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
                 "--no-tensorboard", *set_flags(SMALL)])
    assert code == 2
    assert "sees no CUDA GPU" in one_line_error(capsys.readouterr().err)
    assert not out.exists()


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("device") / "run"
    cfg = load_config("toy", {"mode": "var-sample", "max_steps": 2, "epochs": 100, "device": "cpu"}, SMALL)
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
    assert "sees no CUDA GPU" in one_line_error(capsys.readouterr().err)


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
    train(load_config("toy", {"mode": "var-sample", "max_steps": 4, "epochs": 100}, SMALL), whole,
          progress=False, tensorboard=False)
    train(load_config("toy", {"mode": "var-sample", "max_steps": 2, "epochs": 100}, SMALL), split,
          progress=False, tensorboard=False)
    assert main(["train", "--resume", str(split), "--max-steps", "4", "--device", "cpu", "--no-progress",
                 "--no-tensorboard"]) == 0
    assert json.loads((split / "run.json").read_text(encoding="utf-8"))["config"]["device"] == "cpu"
    (a, _), (b, _) = load_checkpoint(whole / "last"), load_checkpoint(split / "last")
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def _tiny_problem(mode: str):
    cfg = load_config("toy", {"mode": mode}, [*SMALL, "model.dropout=0.0"])
    pairs = synthetic_pairs(cfg)["train"]
    src_vocab, tgt_vocab = Vocab.build(pairs.src), Vocab.build(pairs.tgt)
    batch = encode_pairs(pairs, src_vocab, tgt_vocab).batches(16)[0]
    objective = make_objective(mode, **cfg.objective)
    torch.manual_seed(0)
    model = LatentAlignmentNMT(cfg.model_config(len(src_vocab), len(tgt_vocab)), objective.uses_posterior)
    return model, objective, batch


NEEDS_BF16 = pytest.mark.skipif(not bf16_supported("cpu"),
                                reason="this CPU has no bf16 LSTM kernel (oneDNN needs AVX-512)")


@NEEDS_BF16
@pytest.mark.parametrize("mode", mode_names())
def test_bf16_autocast_runs_products_in_bf16_and_keeps_losses_and_gradients_fp32(mode):
    """Tolerances: bf16 keeps 8 bits of mantissa (relative rounding 0.4 %); measured here the
    loss differs from fp32 by < 1e-5 relative and the gradient by < 0.3 % (relative L2); the
    test allows 1e-3 and 3 %."""
    model, objective, batch = _tiny_problem(mode)
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(1)  # the same samples for the sampling modes
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            problem = model.problem(batch, objective.uses_posterior)
            terms = objective.loss(problem)
        assert problem.emission.query_pre.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        assert problem.prior_scores.dtype == torch.float32 and terms.surrogate.dtype == torch.float32
        model.zero_grad()
        terms.surrogate.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)
        results[precision] = (float(terms.surrogate.detach()), torch.cat([g.flatten() for g in grads]))
    (loss32, grad32), (loss16, grad16) = results["fp32"], results["bf16"]
    assert abs(loss16 - loss32) <= 1e-3 * abs(loss32)
    assert float((grad16 - grad32).norm() / grad32.norm()) < 0.03


@NEEDS_BF16
def test_training_in_bf16_and_evaluating_in_fp32(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--mode", "var-sample", "--out", str(run), "--max-steps", "3", "--no-progress",
                 "--no-tensorboard", "--set", "precision=bf16", *set_flags(SMALL)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 1.0 < result["ppl"] < float("inf")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records[-1]["split"] == "valid" and records[-1]["step"] == 3


def test_an_unknown_precision_is_aone_line_error(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--set", "precision=fp16", "--no-progress"])
    assert code == 2
    assert "precision must be fp32 or bf16, got 'fp16'" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_bf16_without_kernels_is_a_one_line_error_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """What a user of an AVX2-only CPU sees (forced here on any CPU by making the probe say no)."""
    monkeypatch.setattr("varattn.device.bf16_supported", lambda device_type: False)
    code = main(["train", "--out", str(tmp_path / "run"), "--set", "precision=bf16", "--no-progress"])
    assert code == 2
    assert "precision bf16 was asked for, but this CPU has no bfloat16 LSTM kernel" in \
        one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_the_bf16_probe_agrees_with_the_lstm_kernel():
    lstm = torch.nn.LSTM(4, 4, batch_first=True)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 2, 4))
        works = True
    except RuntimeError:
        works = False
    assert bf16_supported("cpu") is works
