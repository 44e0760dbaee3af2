"""The task-agnostic training core (``varattn.training``) on a task that is not NMT, and its parts."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from varattn.checkpoint import load_checkpoint
from varattn.errors import VarattnError
from varattn.training import BatchLoss, Heatmap, Task, TrainingConfig, Validation, resume, start
from varattn.training.config import positive, spec
from varattn.training.optim import next_lr


@dataclass
class ToyConfig(TrainingConfig):
    """A task config: the generic keys plus the toy task's own."""

    examples: int = spec(48, rule=positive)
    batch_size: int = spec(8, rule=positive)


class Regression(Task):
    """Noisy linear regression y = A x + e: the smallest task the core can train."""

    name = "toy-regression"

    def __init__(self, cfg: ToyConfig):
        self.cfg = cfg

    def prepare(self, run_dir: Path) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(self.cfg.examples, 5, generator=g)
        self.y = self.x @ torch.randn(5, 3, generator=g) + 0.1 * torch.randn(self.cfg.examples, 3, generator=g)

    def save(self, run_dir: Path) -> dict:
        (run_dir / "toy.txt").write_text("run file of the task\n")
        return {"inputs": 5}

    def load(self, run_dir: Path, info: dict) -> None:
        assert info["inputs"] == 5 and (run_dir / "toy.txt").exists()
        self.prepare(run_dir)

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.2), nn.Linear(4, 3))

    def train_batches(self, epoch: int) -> list:
        order = torch.randperm(self.cfg.examples, generator=torch.Generator().manual_seed(self.cfg.seed + epoch))
        return [order[i: i + self.cfg.batch_size] for i in range(0, self.cfg.examples, self.cfg.batch_size)]

    def loss(self, model: nn.Module, batch, step: int) -> BatchLoss:
        sse = ((model(self.x[batch]) - self.y[batch]) ** 2).sum()
        return BatchLoss(sse, len(batch), {"nll": float(sse.detach()), "tokens": float(len(batch))})

    def valid_batches(self) -> list:
        return [torch.arange(0, 16), torch.arange(16, 24)]

    def valid_sums(self, model: nn.Module, batches) -> dict:
        return {"sse": sum(float(((model(self.x[b]) - self.y[b]) ** 2).sum()) for b in batches),
                "n": float(sum(len(b) for b in batches))}

    def valid_result(self, sums: dict) -> Validation:
        mse = sums["sse"] / sums["n"]
        return Validation({"mse": mse}, mse, f"valid mse {mse:.4f}")

    def heatmaps(self, model: nn.Module) -> list[Heatmap]:
        weights = torch.softmax(model[0].weight, dim=-1).numpy()  # (4, 5): rows sum to one
        return [Heatmap("first-layer", weights, weights[::-1].copy())]


def _cfg(**kw) -> ToyConfig:
    return ToyConfig.from_dict({"lr": 0.01, "epochs": 3, "log_every": 2, "threads": 1, "device": "cpu", **kw})


def _records(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("tokens_per_s", None)
        record.pop("examples_per_s", None)
        out.append(record)
    return out


def test_the_core_trains_a_task_that_is_not_nmt(tmp_path):
    run_dir = tmp_path / "run"
    last = start(Regression(_cfg()), _cfg(), run_dir, progress=False, tensorboard=False).train()
    records = _records(run_dir)
    valid = [r for r in records if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [6, 12, 18]
    assert last == records[-1] == valid[-1] and valid[-1]["mse"] < valid[0]["mse"]  # it learned
    info = json.loads((run_dir / "run.json").read_text())
    assert info["task"] == "toy-regression" and info["inputs"] == 5 and info["config"]["examples"] == 48
    assert {"loss", "ppl", "lr", "skipped_steps"} <= set(records[0])
    for name in ("best", "last", "resume"):
        assert load_checkpoint(run_dir / name)[0]
    with pytest.raises(VarattnError, match="already holds a run"):
        start(Regression(_cfg()), _cfg(), run_dir, progress=False, tensorboard=False)


def test_stopping_and_resuming_is_bit_identical_for_any_task(tmp_path):
    start(Regression(_cfg()), _cfg(), tmp_path / "straight", progress=False, tensorboard=False).train()
    start(Regression(_cfg(max_steps=8)), _cfg(max_steps=8), tmp_path / "split", progress=False,
          tensorboard=False).train()
    resume(Regression(_cfg()), _cfg(), tmp_path / "split", progress=False, tensorboard=False).train()
    one, two = load_checkpoint(tmp_path / "straight" / "last")[0], load_checkpoint(tmp_path / "split" / "last")[0]
    assert all(torch.equal(one[k], two[k]) for k in one)
    # stopping at step 8 added a validation there; otherwise the records are the same
    extra = {"split": "valid", "step": 8}
    assert [r for r in _records(tmp_path / "split") if extra.items() - r.items()] == _records(tmp_path / "straight")
    with pytest.raises(VarattnError, match="different configuration .*examples"):
        resume(Regression(_cfg(examples=40)), _cfg(examples=40), tmp_path / "split", progress=False)


class Examples(Regression):
    """The regression task counting what it predicts as examples, not tokens."""

    unit = "examples"
    unit_short = "ex"

    def loss(self, model: nn.Module, batch, step: int) -> BatchLoss:
        out = super().loss(model, batch, step)
        out.figures["examples"] = out.figures.pop("tokens")
        return out


def test_the_task_names_the_unit_of_its_figures(tmp_path):
    start(Examples(_cfg()), _cfg(), tmp_path / "examples", progress=False, tensorboard=False).train()
    start(Regression(_cfg()), _cfg(), tmp_path / "tokens", progress=False, tensorboard=False).train()
    lines = (tmp_path / "examples" / "metrics.jsonl").read_text().splitlines()
    train = [json.loads(line) for line in lines if '"split": "train"' in line]
    assert all("examples_per_s" in r and "tokens_per_s" not in r and "examples" not in r for r in train)
    assert all(r["ppl"] == pytest.approx(math.exp(r["loss"])) for r in train)
    assert _records(tmp_path / "examples") == _records(tmp_path / "tokens")  # the same numbers, per example


def test_a_resume_state_that_counted_tokens_continues_in_the_tasks_unit(tmp_path):
    """A window saved before tasks named their unit holds the count as ``tokens``; resuming renames it."""
    cfg = _cfg(log_every=4, save_every=3)
    start(Examples(cfg), cfg, tmp_path / "straight", progress=False, tensorboard=False).train()
    trainer = start(Examples(cfg), cfg, tmp_path / "old", progress=False, tensorboard=False)
    update = trainer.update

    def dying(*args, **kwargs):
        if trainer.state.step + 1 == 5:
            raise RuntimeError("crash")
        return update(*args, **kwargs)

    trainer.update = dying
    with pytest.raises(RuntimeError, match="crash"):
        trainer.train()
    meta_path = tmp_path / "old" / "resume" / "meta.json"
    meta = json.loads(meta_path.read_text())
    window = meta["meta"]["state"]["window"]
    assert window["examples"] > 0  # saved at step 3, inside the window of the record at step 4
    window["tokens"] = window.pop("examples")
    meta_path.write_text(json.dumps(meta))
    resume(Examples(cfg), cfg, tmp_path / "old", progress=False, tensorboard=False).train()
    assert _records(tmp_path / "old") == _records(tmp_path / "straight")


def test_without_tensorboard_installed_training_says_so_and_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails
    with caplog.at_level("WARNING", logger="varattn"):
        start(Regression(_cfg(epochs=1)), _cfg(epochs=1), tmp_path / "run", progress=False).train()
    assert any("tensorboard, which is not installed" in r.getMessage() and "varattn[tensorboard]" in r.getMessage()
               for r in caplog.records)
    assert _records(tmp_path / "run") and not (tmp_path / "run" / "tb").exists()


def test_alignment_heatmaps_reach_tensorboard(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    start(Regression(_cfg(epochs=2)), _cfg(epochs=2), tmp_path / "run", progress=False).train()
    events = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("alignment/first-layer")
    assert [i.step for i in images] == [6, 12]
    assert (images[0].height, images[0].width) == (4 * 8, (5 + 1 + 5) * 8)  # prior | posterior, 8 px a cell


def test_nmt_heatmaps_are_alignment_distributions_of_validation_pairs(tmp_path):
    from varattn.nmt.config import load_config
    from varattn.nmt.task import NMTTask

    cfg = load_config("toy", {"mode": "var-enum"}, ["synthetic_sizes=[40, 6, 2]", "model.embed_dim=8"])
    task = NMTTask(cfg)
    task.prepare(tmp_path)
    model = task.build_model().eval()
    with torch.no_grad():
        maps = task.heatmaps(model)
    assert len(maps) == 3
    for i, heatmap in enumerate(maps):
        shape = (len(task.data.valid.tgt[i]) + 1, len(task.data.valid.src[i]))  # target tokens and </s>
        assert heatmap.prior.shape == heatmap.posterior.shape == shape
        assert heatmap.rows[:-1] == task.data.valid.tgt[i] and heatmap.cols == task.data.valid.src[i]
        np.testing.assert_allclose(heatmap.prior.sum(1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(heatmap.posterior.sum(1), 1.0, rtol=1e-5)


def test_the_learning_rate_halves_only_when_validation_gets_worse_from_the_start_epoch():
    assert next_lr(1.0, 2.0, math.inf, 5, 0.5, 2) == 1.0  # the first validation
    assert next_lr(1.0, 2.0, 3.0, 5, 0.5, 2) == 1.0  # better
    assert next_lr(1.0, 3.0, 3.0, 5, 0.5, 2) == 0.5  # not better
    assert next_lr(1.0, 4.0, 3.0, 1, 0.5, 2) == 1.0  # worse, but before decay_start_epoch


def test_config_sections_are_checked_by_key():
    with pytest.raises(VarattnError, match=r"^examples must be a positive integer, got 0$"):
        ToyConfig.from_dict({"examples": 0})
    with pytest.raises(VarattnError, match="unknown config keys: colour"):
        ToyConfig.from_dict({"colour": "red"})
    assert ToyConfig.from_dict({"lr": "3e-4"}).lr == pytest.approx(3e-4)
    assert ToyConfig.from_dict(_cfg().to_dict()) == _cfg()


class ScriptedValidation(Regression):
    """The regression task whose validation metric is a given function of the number of updates taken."""

    name = "toy-scripted"

    def __init__(self, cfg: ToyConfig, metric_at):
        super().__init__(cfg)
        self.metric_at, self.updates = metric_at, 0

    def loss(self, model: nn.Module, batch, step: int) -> BatchLoss:
        self.updates = step + 1
        return super().loss(model, batch, step)

    def valid_result(self, sums: dict) -> Validation:
        metric = self.metric_at(self.updates)
        return Validation({"mse": metric}, metric, f"valid {metric}")


def _lr_by_validation(tmp_path, metric_at, **kw) -> list[tuple[int, bool, float]]:
    cfg = _cfg(**{"lr": 0.01, "decay_start_epoch": 2, **kw})
    start(ScriptedValidation(cfg, metric_at), cfg, tmp_path / "run", progress=False, tensorboard=False).train()
    return [(r["step"], r["epoch_end"], r["lr"]) for r in _records(tmp_path / "run") if r["split"] == "valid"]


def test_a_run_improving_every_epoch_never_decays_even_when_mid_epoch_validations_were_better(tmp_path):
    # 6 updates an epoch; every epoch's end improves on the last one, but the mid-epoch validation just
    # before it was better still (the coin flip that halved the study's learning rate every epoch)
    def metric_at(step):
        epoch_in_progress = -(-step // 6)
        return 10.0 - step / 6 if step % 6 == 0 else 10.0 - epoch_in_progress - 0.5

    seen = _lr_by_validation(tmp_path, metric_at, epochs=5, eval_every=4)
    assert [s for s, end, _ in seen if end] == [6, 12, 18, 24, 30]  # one schedule decision per epoch
    assert [s for s, end, _ in seen if not end] == [4, 8, 16, 20, 28]  # 12 and 24 are epoch ends: scored once
    assert {lr for _, _, lr in seen} == {0.01}


def test_a_stalling_run_decays_once_per_epoch_that_is_not_a_new_best(tmp_path):
    ends = {6: 5.0, 12: 4.0, 18: 4.5, 24: 4.2, 30: 3.0}
    seen = _lr_by_validation(tmp_path, lambda step: ends.get(step, 0.1), epochs=5, eval_every=3)
    assert [(s, lr) for s, end, lr in seen if end] == [(6, 0.01), (12, 0.01), (18, 0.005), (24, 0.0025),
                                                       (30, 0.0025)]
    # the mid-epoch validations (metric 0.1, far better than any epoch's end) never touch the schedule
    assert [lr for s, end, lr in seen if not end] == [0.01, 0.01, 0.01, 0.005, 0.0025]


def test_the_schedule_starts_at_decay_start_epoch(tmp_path):
    ends = {6: 1.0, 12: 2.0, 18: 3.0, 24: 4.0}
    seen = _lr_by_validation(tmp_path, lambda step: ends[step], epochs=4, decay_start_epoch=3)
    assert [lr for _, _, lr in seen] == [0.01, 0.01, 0.005, 0.0025]  # epoch 2 was worse, but before epoch 3
