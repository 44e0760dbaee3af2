"""Reliability: exact resume, SIGKILL during training, non-finite steps, unsafe checkpoints, bad corpora."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import varattn
import varattn.nmt.task as task_module
from varattn.checkpoint import load_checkpoint
from varattn.errors import VarattnError
from varattn.latent.objectives import LossTerms
from varattn.nmt.config import TrainConfig, load_config
from varattn.nmt.data import prepare_run_data, read_pairs
from varattn.nmt.text import Segmenter
from varattn.nmt.train import train
from varattn.nmt.train import trainer as make_trainer
from varattn.training import Trainer

from conftest import SMALL, cli, one_line_error, set_flags

TIMING_KEYS = ("tokens_per_s",)


# One thread (SMALL sets threads=1), so that runs in and out of process do the same arithmetic.
pytestmark = pytest.mark.usefixtures("restore_threads")


def _config(mode: str, steps: int, *extra: str, **flags) -> TrainConfig:
    return load_config("toy", {"mode": mode, "max_steps": steps, "epochs": 100, **flags}, [*SMALL, *extra])


def _records(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for key in TIMING_KEYS:
            record.pop(key, None)
        out.append(record)
    return out


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def _assert_same_runs(one: Path, two: Path) -> None:
    """Bit-identical weights (best, last, and the full resume state) and identical metrics."""
    for name in ("best", "last", "resume"):
        (ta, ma), (tb, mb) = load_checkpoint(one / name), load_checkpoint(two / name)
        _assert_same_tensors(ta, tb)
        if name != "resume":
            assert ma == mb
    assert _records(one) == _records(two)


class Crash(Exception):
    """Stands in for a process dying in the middle of training."""


def _crash_at(trainer: Trainer, step: int) -> None:
    """Make ``trainer`` die when it is about to take update number ``step``."""
    update = trainer.update

    def dying(batch, *args):
        if trainer.state.step + 1 == step:
            raise Crash
        return update(batch, *args)

    trainer.update = dying


# -- 1. exact resume ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["var-sample", "hard-sample", "var-enum"])
def test_stop_crash_and_resume_equal_one_uninterrupted_run(tmp_path, monkeypatch, mode):
    # Every validation after the first counts as "worse", so the learning rate halves at the epoch ends of
    # steps 16 and 24 (not at 26, a mid-epoch validation): the schedule's state must survive the resume as well.
    monkeypatch.setattr(task_module, "valid_metric", lambda result: 1.0)
    extra = ["model.dropout=0.1", "save_every=3", "log_every=2", "decay_start_epoch=1"]
    steps = 26  # 8 updates per epoch: validations at 8, 16, 24 and 26

    train(_config(mode, steps, *extra), tmp_path / "straight", progress=False, tensorboard=False)

    # Stop at a validation (8 updates), then continue to 26 and crash before update 23 (saved at 21).
    split = tmp_path / "split"
    train(_config(mode, 8, *extra), split, progress=False, tensorboard=False)
    trainer = make_trainer(_config(mode, steps, *extra), split, resume=True, progress=False, tensorboard=False)
    _crash_at(trainer, 23)
    with pytest.raises(Crash):
        trainer.train()
    assert json.loads((split / "run.json").read_text())["config"]["max_steps"] == steps  # later resumes keep it

    torch.manual_seed(12345)  # whatever happened in between must not matter
    random.seed(6789)
    trainer = make_trainer(_config(mode, steps, *extra), split, resume=True, progress=False, tensorboard=False)
    assert trainer.state.step == 21 and trainer.state.epoch == 2 and trainer.state.batch_in_epoch == 5
    assert trainer.state.lr == pytest.approx(trainer.cfg.lr / 2)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [trainer.state.lr]
    trainer.train()

    _assert_same_runs(tmp_path / "straight", split)
    records = _records(split)
    assert [r["lr"] for r in records if r["split"] == "valid"] == pytest.approx([3e-3, 1.5e-3, 7.5e-4, 7.5e-4])
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(2, 27, 2))


def test_resume_restores_the_rng_and_the_learning_rate(tmp_path):
    run_dir = tmp_path / "r"
    trainer = make_trainer(_config("var-sample", 5, "save_every=0"), run_dir, progress=False, tensorboard=False)
    trainer.state.lr = 1.25e-4
    for group in trainer.optimizer.param_groups:
        group["lr"] = 0.5  # stale: the counter is what the schedule follows
    torch.manual_seed(3)
    expected = torch.get_rng_state()
    trainer.save_resume()
    torch.manual_seed(0)
    again = make_trainer(_config("var-sample", 5, "save_every=0"), run_dir, resume=True, progress=False,
                         tensorboard=False)
    assert [g["lr"] for g in again.optimizer.param_groups] == [1.25e-4]
    assert torch.equal(torch.get_rng_state(), expected)


def test_training_leaves_python_and_numpy_generators_alone(tmp_path):
    # Only torch's generator is saved with resume/: nothing in training may draw from the others.
    random.seed(4)
    np.random.seed(5)
    expected = (random.getstate(), np.random.get_state()[1].copy())
    train(_config("var-sample", 3, "model.dropout=0.1"), tmp_path / "r", progress=False, tensorboard=False)
    assert random.getstate() == expected[0]
    assert (np.random.get_state()[1] == expected[1]).all()


def test_resume_errors_are_clear(tmp_path, capsys):
    run_dir = tmp_path / "r"
    code, _, _ = cli(capsys, "train", "--mode", "soft", "--out", run_dir, "--max-steps", 3, "--no-tensorboard",
                      "--no-progress", *set_flags(SMALL))
    assert code == 0

    # a finished run: nothing to do, said so, and nothing changes
    before = (run_dir / "metrics.jsonl").read_bytes()
    code, _, err = cli(capsys, "train", "--resume", run_dir, "--no-tensorboard", "--no-progress")
    assert code == 2 and "already finished" in one_line_error(err) and "--max-steps" in err
    assert (run_dir / "metrics.jsonl").read_bytes() == before

    # ... but it can be extended, and the new limit is remembered
    code, out, _ = cli(capsys, "train", "--resume", run_dir, "--max-steps", 5, "--no-tensorboard", "--no-progress")
    assert code == 0 and "step 5" in out
    assert json.loads((run_dir / "run.json").read_text())["config"]["max_steps"] == 5

    # a different configuration is not a resume
    with pytest.raises(VarattnError, match="lr"):
        make_trainer(_config("soft", 5, "lr=0.1"), run_dir, resume=True, progress=False, tensorboard=False)

    # no resume/ (the run died before its first save)
    shutil.rmtree(run_dir / "resume")
    code, _, err = cli(capsys, "train", "--resume", run_dir, "--max-steps", 9, "--no-tensorboard")
    assert code == 2 and "no resume/ checkpoint" in one_line_error(err)

    # --out that cannot be a run directory
    (tmp_path / "a-file").write_text("x")
    code, _, err = cli(capsys, "train", "--out", tmp_path / "a-file", "--max-steps", 1, "--no-tensorboard")
    assert code == 2 and "is a file" in one_line_error(err)

    # not a run at all
    code, _, err = cli(capsys, "train", "--resume", tmp_path / "nothing-here", "--no-tensorboard")
    assert code == 2 and "nothing to resume" in one_line_error(err)


def test_resume_from_files_reuses_the_saved_segmentation(tmp_path):
    data = tmp_path / "data"
    src = [f"das ist satz nummer {i} im korpus" for i in range(60)]
    tgt = [f"this is sentence number {i} in the corpus" for i in range(60)]
    for split in ("train", "valid"):
        _write_corpus(data, split, src, tgt)
    sets = ["subword=sentencepiece", "subword_vocab_size=30", "max_valid_sentences=6", "log_every=1"]
    files = {"train": str(data / "train"), "valid": str(data / "valid")}

    train(_config("soft", 8, *sets, **files), tmp_path / "straight", progress=False, tensorboard=False)
    split = tmp_path / "split"
    train(_config("soft", 4, *sets, **files), split, progress=False, tensorboard=False)  # 4 updates = 1 epoch
    models = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in split.glob("spm.*.model")}
    assert len(models) == 2
    train(_config("soft", 8, *sets, **files), split, resume=True, progress=False, tensorboard=False)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in split.glob("spm.*.model")} == models
    _assert_same_runs(tmp_path / "straight", split)

    # corpora that changed under the run: the batch order would not be the same
    _write_corpus(data, "valid", [src[1], src[0], *src[2:]], [tgt[1], tgt[0], *tgt[2:]])
    with pytest.raises(VarattnError, match="data changed"):
        make_trainer(_config("soft", 12, *sets, **files), split, resume=True, progress=False, tensorboard=False)
    _write_corpus(data, "train", [*src, "ganz neue wörter"], [*tgt, "brand new words"])
    with pytest.raises(VarattnError, match="training data changed"):
        make_trainer(_config("soft", 12, *sets, **files), split, resume=True, progress=False, tensorboard=False)


# -- 2. SIGKILL during training -------------------------------------------------------------------

KILL_STEPS = 48
KILL_SETS = [*SMALL, "model.dropout=0.1", "save_every=3", "log_every=2", "epochs=100"]


def _wait_for_new_save(proc: subprocess.Popen, meta: Path, after: int | None, limit: float = 60.0) -> bool:
    """Wait until ``proc`` (re)writes resume/; False when it exits first."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            stamp = meta.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != after:
            return True
        time.sleep(0.01)
    raise AssertionError("training did not save resume/ in time")


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    run_dir = tmp_path / "killed"
    base = [sys.executable, "-m", "varattn.cli", "train", "--no-progress", "--no-tensorboard"]
    fresh = [*base, "--mode", "var-sample", "--max-steps", str(KILL_STEPS), "--out", str(run_dir),
             *[f"--set={s}" for s in KILL_SETS]]
    resume = [*base, "--resume", str(run_dir)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    meta = run_dir / "resume" / "meta.json"
    rng = random.Random(2018)
    kills, finished = 0, False
    for round_ in range(3):
        stamp = meta.stat().st_mtime_ns if meta.exists() else None
        proc = subprocess.Popen(fresh if round_ == 0 else resume, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            if _wait_for_new_save(proc, meta, stamp):
                time.sleep(rng.uniform(0.0, 0.4))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # rc 2 "already finished": the previous round was killed after its final save
        if proc.returncode == 0 or (proc.returncode == 2 and b"already finished" in err):
            finished = True
            break
        assert proc.returncode == -signal.SIGKILL, err.decode()
    assert kills >= 1
    if not finished:
        done = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=120)
        # killed after its last save but before exiting: the run is already complete
        assert done.returncode == 0 or "already finished" in done.stderr, done.stderr
    assert varattn.load(run_dir).model is not None
    assert varattn.load(run_dir, "last").meta["step"] == KILL_STEPS

    cfg = load_config("toy", {"mode": "var-sample", "max_steps": KILL_STEPS}, KILL_SETS)
    train(cfg, tmp_path / "straight", progress=False, tensorboard=False)
    _assert_same_runs(tmp_path / "straight", run_dir)


# -- 2b. Ctrl-C / SIGTERM: a graceful stop -------------------------------------------------------

STOP_STEPS = 60
STOP_SETS = [*SMALL, "model.dropout=0.1", "save_every=0", "log_every=2", "epochs=100"]


@pytest.fixture(scope="module")
def uninterrupted_stop_run(tmp_path_factory) -> Path:
    """The uninterrupted run that both stopped runs must equal (trained once for SIGINT and SIGTERM)."""
    run_dir = tmp_path_factory.mktemp("stop") / "straight"
    threads = torch.get_num_threads()
    train(load_config("toy", {"mode": "var-sample", "max_steps": STOP_STEPS}, STOP_SETS), run_dir,
          progress=False, tensorboard=False)
    torch.set_num_threads(threads)
    return run_dir


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_resume_state_and_exits_cleanly_then_resume_matches(tmp_path, sig, uninterrupted_stop_run):
    run_dir = tmp_path / "stopped"
    sets = STOP_SETS
    base = [sys.executable, "-m", "varattn.cli", "train", "--no-progress", "--no-tensorboard"]
    fresh = [*base, "--mode", "var-sample", "--max-steps", str(STOP_STEPS), "--out", str(run_dir),
             *[f"--set={s}" for s in sets]]
    proc = subprocess.Popen(fresh, env={**os.environ, "PYTHONHASHSEED": "0"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 60
        while not (run_dir / "metrics.jsonl").exists():  # training is under way
            assert proc.poll() is None and time.monotonic() < end, proc.communicate()[1].decode()
            time.sleep(0.005)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = err.decode()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and f"stopped by {signal.Signals(sig).name}" in err
    stopped_at = load_checkpoint(run_dir / "resume")[1]["state"]["step"]
    assert 0 < stopped_at < STOP_STEPS

    train(load_config("toy", {"mode": "var-sample", "max_steps": STOP_STEPS}, sets), run_dir, resume=True,
          progress=False, tensorboard=False)
    _assert_same_runs(uninterrupted_stop_run, run_dir)


# -- 3. non-finite steps --------------------------------------------------------------------------


def _poison(trainer: Trainer, bad_updates: set[int]) -> None:
    """Give update number n (1-based) a NaN loss when n is in ``bad_updates``."""
    loss = trainer.model.loss

    def poisoned(batch, objective):
        terms = loss(batch, objective)
        if trainer.state.step + 1 in bad_updates:
            nan = torch.tensor(math.nan)
            return LossTerms(terms.surrogate * nan, {k: v * nan for k, v in terms.per_token.items()},
                             terms.target_mask)
        return terms

    trainer.model.loss = poisoned


def _snapshot(trainer: Trainer) -> tuple[dict, dict]:
    params = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    opt = trainer.optimizer.state_dict()
    state = {(p, k): v.clone() if torch.is_tensor(v) else v for p, s in opt["state"].items() for k, v in s.items()}
    return params, state


def _assert_same_snapshot(one, two) -> None:
    _assert_same_tensors(one[0], two[0])
    assert one[1].keys() == two[1].keys()
    for key in one[1]:
        assert torch.equal(one[1][key], two[1][key]), key


def test_a_non_finite_step_changes_nothing(tmp_path, monkeypatch):
    trainer = make_trainer(_config("var-enum", 10), tmp_path / "r", progress=False, tensorboard=False)
    batches = trainer.task.train_batches(0)
    steps_taken = []
    step = trainer.optimizer.step
    monkeypatch.setattr(trainer.optimizer, "step", lambda *a, **k: (steps_taken.append(1), step(*a, **k))[1])

    assert trainer.update(batches[0]) is not None
    trainer.state.step = 1
    before = _snapshot(trainer)

    _poison(trainer, {2})  # a NaN loss
    assert trainer.update(batches[1]) is None
    _assert_same_snapshot(before, _snapshot(trainer))

    # a finite loss with a NaN gradient
    weight = next(trainer.model.parameters())
    handle = weight.register_hook(lambda grad: grad * math.nan)
    trainer.state.step = 5
    assert trainer.update(batches[2]) is None
    handle.remove()
    _assert_same_snapshot(before, _snapshot(trainer))
    assert all(p.grad is None for p in trainer.model.parameters())
    assert trainer.state.bad_steps == 2 and len(steps_taken) == 1

    assert trainer.update(batches[3]) is not None  # and the next good step trains again
    assert trainer.state.consecutive_bad == 0 and len(steps_taken) == 2
    after = _snapshot(trainer)[0]
    assert any(not torch.equal(after[k], before[0][k]) for k in after)


def test_skipped_steps_are_counted_logged_and_stop_training(tmp_path, caplog):
    trainer = make_trainer(_config("var-enum", 12, "log_every=1", "max_bad_steps=3"), tmp_path / "r", progress=False,
                      tensorboard=False)
    _poison(trainer, {3, 5, 6, 9, 10, 11, 12})
    with caplog.at_level("WARNING", logger="varattn"), pytest.raises(VarattnError) as info:
        trainer.train()
    message = str(info.value)
    assert "step 11" in message and "3 consecutive" in message and "nll=nan" in message
    skipped = {r["step"]: r["skipped_steps"] for r in _records(tmp_path / "r") if r["split"] == "train"}
    assert skipped == {1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 6: 3, 7: 3, 8: 3, 9: 4, 10: 5}
    warnings = [r.getMessage() for r in caplog.records if "update skipped" in r.getMessage()]
    assert [w.split(":")[0] for w in warnings] == [f"step {n}" for n in (3, 5, 6, 9, 10, 11)]


# -- 4. checkpoint safety at the model level ------------------------------------------------------


class _Payload:
    """Unpickling this creates the file ``path``: the kind of code a pickled checkpoint can run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def trained_run(tiny_run) -> Path:
    return tiny_run("soft", 4, SMALL)  # shared with test_nmt.py: copied before it is changed


def _with_weights(trained_run: Path, tmp_path: Path, data: bytes, fix_meta: bool) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    weights = run_dir / "best" / "weights.safetensors"
    weights.write_bytes(data)
    if fix_meta:  # the attacker also rewrote meta.json so that size and checksum agree
        import hashlib

        meta_path = run_dir / "best" / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["weights_sha256"], meta["weights_bytes"] = hashlib.sha256(data).hexdigest(), len(data)
        meta_path.write_text(json.dumps(meta))
    return run_dir


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL, "torch.save"])
@pytest.mark.parametrize("fix_meta", [False, True])
def test_a_pickle_in_place_of_the_weights_is_never_run(trained_run, tmp_path, capsys, protocol, fix_meta):
    marker = tmp_path / "pwned"
    # the payload works: unpickling it really creates the marker
    pickle.loads(pickle.dumps(_Payload(marker), protocol=2))
    assert marker.exists()
    marker.unlink()

    if protocol == "torch.save":
        buffer = io.BytesIO()
        torch.save({"weights": _Payload(marker)}, buffer)
        data = buffer.getvalue()
    else:
        data = pickle.dumps(_Payload(marker), protocol=protocol)
    run_dir = _with_weights(trained_run, tmp_path, data, fix_meta)
    with pytest.raises(VarattnError):
        varattn.load(run_dir)
    code, out, err = cli(capsys, "evaluate", run_dir)
    assert code == 2 and out == ""
    line = one_line_error(err)
    assert "pickle" in line or "corrupted" in line
    assert not marker.exists()


@pytest.mark.parametrize("fix_meta", [False, True])
def test_truncated_weights_are_refused(trained_run, tmp_path, capsys, fix_meta):
    data = (trained_run / "best" / "weights.safetensors").read_bytes()
    run_dir = _with_weights(trained_run, tmp_path, data[: len(data) // 2], fix_meta)
    with pytest.raises(VarattnError, match="corrupted"):
        varattn.load(run_dir)
    code, _, err = cli(capsys, "evaluate", run_dir)
    assert code == 2 and "corrupted" in one_line_error(err)
    assert varattn.load(run_dir, "last").model is not None  # the other checkpoint is untouched


# -- 5. corpora at the command line ---------------------------------------------------------------


def _write_corpus(directory: Path, split: str, src: list[str], tgt: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{split}.de").write_text("".join(f"{line}\n" for line in src), encoding="utf-8")
    (directory / f"{split}.en").write_text("".join(f"{line}\n" for line in tgt), encoding="utf-8")


@pytest.mark.parametrize(("bad_file", "subword"), [("train.en", "none"), ("valid.de", "sentencepiece")])
def test_invalid_utf8_stops_before_writing(tmp_path, capsys, bad_file, subword):
    data = tmp_path / "data"
    lines = [f"wort {i} hier" for i in range(30)]
    for split in ("train", "valid"):
        _write_corpus(data, split, lines, [f"word {i} here" for i in range(30)])
    path = data / bad_file
    raw = path.read_bytes().split(b"\n")
    raw[4] = b"caf\xe9 latin-1"
    path.write_bytes(b"\n".join(raw))
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--train", data / "train", "--valid", data / "valid", "--out", out,
                        "--max-steps", 1, "--no-tensorboard", f"--set=subword={subword}", "--set=subword_vocab_size=40",
                        *set_flags(SMALL))
    line = one_line_error(err)
    assert code == 2 and bad_file in line and "line 5" in line and "UTF-8" in line
    assert not out.exists() or not any(out.iterdir())


def test_empty_lines_are_dropped_in_pairs_and_counted(tmp_path, capsys, caplog):
    data = tmp_path / "data"
    src = [f"s{i} a{i % 5} b{i % 3}" for i in range(40)]
    tgt = [f"t{i} x{i % 5} y{i % 3}" for i in range(40)]
    src[4], tgt[9], src[12], tgt[12], tgt[20] = "", "", "", "", "   "
    _write_corpus(data, "train", src, tgt)
    _write_corpus(data, "valid", src[:6], tgt[:6])
    with caplog.at_level("INFO", logger="varattn"):
        code, _, _ = cli(capsys, "train", "--train", data / "train", "--valid", data / "valid", "--out",
                          tmp_path / "run", "--max-steps", 1, "--no-tensorboard", "--set=subword=none",
                          *set_flags(SMALL))
    assert code == 0
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("read ")]
    assert any("read 40 pairs" in m and "kept 36, dropped 4 empty" in m for m in summaries), summaries
    assert any("read 6 pairs" in m and "kept 5, dropped 1 empty" in m for m in summaries), summaries
    pairs = read_pairs(data / "train.de", data / "train.en", Segmenter("none"), Segmenter("none"), None)
    assert len(pairs) == 36
    assert all(s[0][1:] == t[0][1:] for s, t in zip(pairs.src, pairs.tgt))  # still aligned line by line


# -- configuration values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "needle"),
    [("lr=fast", "lr must be a number"), ("batch_size=abc", "batch_size must be an integer"),
     ("lr=-0.1", "lr must be positive"), ("save_every=-5", "save_every must be a non-negative integer"),
     ("log_every=0", "log_every must be a positive integer"), ("synthetic_sizes=[10]", "synthetic_sizes"),
     ("model.dropout=abc", "model.dropout must be a number, got 'abc'"),
     ("model.dropout=1", "model.dropout must be in [0, 1)"),
     ("model.embed_dim=0", "model.embed_dim must be a positive integer"),
     ("model.embed_dim=2.5", "model.embed_dim must be an integer"),
     ("model.hidden=3", "unknown model config keys: hidden"),
     ("model.src_vocab_size=9", "model.src_vocab_size is set from the data"),
     ("objective.num_samples=2", "unknown objective options: num_samples"),  # var-enum takes none
     ("precision=fp16", "precision must be fp32 or bf16"),
     ("max_bad_steps=yes", "max_bad_steps must be an integer"), ("colour=red", "unknown config keys: colour")],
)
def test_bad_config_values_are_one_line_errors(tmp_path, capsys, setting, needle):
    code, _, err = cli(capsys, "train", "--out", tmp_path / "run", "--max-steps", 1, f"--set={setting}")
    assert code == 2 and needle in one_line_error(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("mode", "setting", "needle", "good"), [
    ("var-sample", "objective.num_samples=0", "objective.num_samples must be a positive integer", "2"),
    ("var-sample", "objective.baseline=maybe", "objective.baseline must be true or false", "false"),
    ("var-gumbel", "objective.temperature=-1", "objective.temperature must be positive", "0.5"),
    ("var-relaxed", "objective.warmup_steps=-2", "objective.warmup_steps must be a non-negative integer", "0"),
])
def test_objective_options_are_checked_against_the_mode(tmp_path, capsys, mode, setting, needle, good):
    code, _, err = cli(capsys, "train", "--mode", mode, "--out", tmp_path / "run", "--max-steps", 1,
                        f"--set={setting}")
    assert code == 2 and needle in one_line_error(err)
    assert not (tmp_path / "run").exists()
    assert load_config("toy", {"mode": mode}, [setting.split("=")[0] + "=" + good]).objective  # a good one passes


def test_numbers_yaml_reads_as_strings_are_numbers():
    assert load_config("toy", None, ["lr=3e-4"]).lr == pytest.approx(3e-4)


_noise = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=12) | st.sampled_from(
    ["", " ", "\t", "\r", "\u2028 x", "\x85", "\ufeff", "a\x00b"])
_words = st.lists(st.sampled_from(["haus", "das", "ü", "字", "@@", "x@@", "\u0301", "▁", "<unk>", "<s>"]), max_size=6)
_line = _noise | _words.map(" ".join) | st.tuples(_words, _noise).map(lambda wn: " ".join(wn[0]) + wn[1])
_lines = st.lists(_line, max_size=8)
_side = _lines | st.binary(max_size=40)
#: mostly parallel files of equal length, sometimes two unrelated files (or raw bytes)
_parallel = st.lists(st.tuples(_line, _line), max_size=8).map(lambda ps: ([s for s, _ in ps], [t for _, t in ps]))
_corpus = st.one_of(_parallel, _parallel, _parallel, st.tuples(_side, _side))
_HYPOTHESIS = settings(max_examples=60, deadline=None, derandomize=True,
                       suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _write_lines(path: Path, lines: list[str] | bytes) -> None:
    path.write_bytes(lines if isinstance(lines, bytes) else "".join(f"{line}\n" for line in lines).encode("utf-8"))


@_HYPOTHESIS
@given(corpus=_corpus, max_len=st.sampled_from([None, 1, 3, 125]))
def test_read_pairs_raises_only_varattn_errors(corpus, max_len):
    src, tgt = corpus
    with tempfile.TemporaryDirectory() as d:
        _write_lines(Path(d) / "a.de", src)
        _write_lines(Path(d) / "a.en", tgt)
        try:
            pairs = read_pairs(Path(d) / "a.de", Path(d) / "a.en", Segmenter("none"), Segmenter("none"), max_len)
        except VarattnError:
            return
        assert len(pairs.src) == len(pairs.tgt)
        assert all(s and t for s, t in zip(pairs.src, pairs.tgt))
        assert max_len is None or all(len(s) <= max_len and len(t) <= max_len for s, t in zip(pairs.src, pairs.tgt))


@settings(_HYPOTHESIS, max_examples=40)
@example(train=(["haus das ü", "字 x@@ a\x00b", "\ufeffhaus"] * 4, ["das \u0301", "\u2028 x ▁", "<unk> <s>"] * 4),
         valid=(["haus", ""], ["", "das"]), subword="sentencepiece")
@given(train=_corpus, valid=_corpus, subword=st.sampled_from(["auto", "none", "sentencepiece"]))
def test_prepare_run_data_raises_only_varattn_errors(train, valid, subword):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for split, (src, tgt) in (("train", train), ("valid", valid)):
            _write_lines(d / f"{split}.de", src)
            _write_lines(d / f"{split}.en", tgt)
        (d / "run").mkdir()
        cfg = TrainConfig(train=str(d / "train"), valid=str(d / "valid"), subword=subword, subword_vocab_size=60)
        try:
            data = prepare_run_data(cfg, d / "run")
        except VarattnError:
            return
        assert len(data.train.src) == len(data.train.tgt)
        assert len(data.src_vocab) >= 4 and len(data.tgt_vocab) >= 4
