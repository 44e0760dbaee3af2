"""Data-parallel training (torchrun, gloo, two CPU processes): the same step as one process, rank 0 writes.

Each test launches ``torchrun --standalone --nproc_per_node 2`` on ``tests/ddp_worker.py``, which runs
``varattn train`` and records the files each rank wrote. Two processes on a split batch are compared
with one process on the combined batch (``Combined``: the same batches, two at a time, as one):
after 6 steps every weight and Adam moment agrees to 1e-4 of its norm (plus 1e-9 absolute, for
moments of gradients that are zero up to rounding). Measured: weights to 4e-8 absolute, moments
to 4e-7 relative; the two sides pad differently and add in a different order, nothing else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from varattn.checkpoint import load_checkpoint
from varattn.nmt.config import load_config
from varattn.nmt.task import NMTTask
from varattn.nmt.train import train
from varattn.training import start

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
TINY = ["model.embed_dim=8", "model.encoder_hidden=8", "model.decoder_hidden=16", "model.attention_dim=8",
        "model.output_hidden=16", "model.inference_hidden=8", "model.dropout=0.0", "batch_size=8",
        "valid_batch_size=5", "threads=1", "log_every=1", "save_every=0", "dist_timeout_s=60"]
STEPS = 6
RTOL, ATOL = 1e-4, 1e-9

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


class Combined(NMTTask):
    """One process on the combined batch: batches 2k and 2k+1 of an epoch as one batch."""

    def train_batches(self, epoch: int):
        b = super().train_batches(epoch)
        return [self.train_ids.collate([*b[i].index.tolist(), *b[i + 1].index.tolist()]) if i + 1 < len(b) else b[i]
                for i in range(0, len(b), 2)]


def _torchrun(run_dir: Path, report: Path, args: list[str]) -> dict[int, dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           str(run_dir), str(report), "--", "train", "--no-progress", "--out", str(run_dir), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("step ") == 1, done.stdout  # the result line, printed by rank 0 only
    return {rank: json.loads(Path(f"{report}.rank{rank}.json").read_text()) for rank in (0, 1)}


def _assert_same_state(two: Path, one: Path) -> None:
    """Weights and Adam's moments of ``resume/`` agree: per tensor, ||a - b|| <= RTOL ||b|| + ATOL.

    Adam's moments scale with the gradient (the weights hardly do: Adam's step is scale-free), so
    this also checks the loss normalisation: a gradient off by the factor N would be 50 % off here.
    """
    ta, tb = load_checkpoint(two / "resume")[0], load_checkpoint(one / "resume")[0]
    keys = [k for k in ta if k.startswith(("model/", "optimizer/")) and ta[k].is_floating_point()]
    assert keys and all(k in tb for k in keys)
    worst = {k: float((ta[k].double() - tb[k].double()).norm()) - RTOL * float(tb[k].double().norm()) for k in keys}
    name = max(worst, key=worst.get)
    assert worst[name] <= ATOL, (name, float(ta[name].norm()), float(tb[name].norm()))


def _write_corpus(d: Path) -> tuple[str, str]:
    """Single-word sources: every alignment is certain, so a sampled estimator is exact (no noise)."""
    d.mkdir()
    words = ["haus", "katze", "hund", "baum", "auto", "buch"]
    targets = ["the house is big", "a cat", "the dog runs fast", "a tree", "my car is red now", "the book"]
    for split, n in (("train", 48), ("valid", 6)):
        (d / f"{split}.de").write_text("".join(f"{words[i % 6]}\n" for i in range(n)))
        (d / f"{split}.en").write_text("".join(f"{targets[(i * 5) % 6]}\n" for i in range(n)))
    return str(d / "train"), str(d / "valid")


def test_two_processes_equal_one_on_the_combined_batch_and_only_rank_0_writes(tmp_path):
    sets = [*TINY, "synthetic_sizes=[64, 10, 2]"]
    two = tmp_path / "two"
    reports = _torchrun(two, tmp_path / "report", ["--mode", "soft", "--max-steps", str(STEPS),
                                                   *[f"--set={s}" for s in sets]])

    # (b) rank 0 wrote the run; rank 1 wrote nothing at all
    assert reports[0]["code"] == reports[1]["code"] == 0
    assert reports[1]["writes"] == []
    assert any("metrics.jsonl" in w for w in reports[0]["writes"])

    # (a) the same parameters as one process on the combined batches
    cfg = load_config("toy", {"mode": "soft", "max_steps": STEPS}, sets)
    start(Combined(cfg), cfg, tmp_path / "one", progress=False, tensorboard=False).train()
    _assert_same_state(two, tmp_path / "one")
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [r["step"] for r in single]
    for r, s in zip(records, single):
        assert r.get("loss", r.get("ppl")) == pytest.approx(s.get("loss", s.get("ppl")), rel=1e-5)
    assert records[-1]["tokens"] == single[-1]["tokens"]  # validation summed over both ranks' shares

    # each rank had its own random stream, both saved
    rng = load_checkpoint(two / "resume")
    assert len([k for k in rng[0] if k.startswith("rng/") and k.endswith("torch")]) == 2

    # (c) the two-process run continues on one process, and evaluates
    more = load_config("toy", {"mode": "soft", "max_steps": STEPS + 3}, sets)
    last = train(more, two, resume=True, progress=False, tensorboard=False)
    assert last["step"] == STEPS + 3 and last["ppl"] > 1
    steps = [json.loads(line)["step"] for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == STEPS + 3 and sorted(set(steps)) == list(range(1, STEPS + 4))


def test_a_sampling_mode_equals_one_process_where_the_estimator_is_exact(tmp_path):
    # var-sample draws alignments from q; with one-word sources q puts all its mass on the one position,
    # so every rank's draws (from its own stream) and the single process's draws are the same.
    train_prefix, valid_prefix = _write_corpus(tmp_path / "data")
    sets = [*TINY, "subword=none", "objective.num_samples=2"]
    files = ["--train", train_prefix, "--valid", valid_prefix]
    _torchrun(tmp_path / "two", tmp_path / "report", ["--mode", "var-sample", "--max-steps", str(STEPS), *files,
                                                      *[f"--set={s}" for s in sets]])
    cfg = load_config("toy", {"mode": "var-sample", "max_steps": STEPS, "train": train_prefix,
                              "valid": valid_prefix}, sets)
    start(Combined(cfg), cfg, tmp_path / "one", progress=False, tensorboard=False).train()
    _assert_same_state(tmp_path / "two", tmp_path / "one")
