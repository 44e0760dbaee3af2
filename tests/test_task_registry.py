"""The task registry: a third task is one package and one registration, and every command serves it.

``regions`` below is such a task, small enough to live in this file: each example is a few random
"regions" (feature vectors) and a query; the latent alignment ``z`` picks the region the query points
at, and the label is that region's class. Its "package" is the config, the ``Task``, the trained run and
the evaluation; its one registration is ``register_task(TaskSpec(...))``. Then ``varattn train --task
regions`` trains it, ``--resume`` continues it bit for bit, ``varattn.load`` opens it and ``varattn
evaluate`` evaluates it, with nothing else changed anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import varattn
from varattn.cli import main
from varattn.errors import VarattnError
from varattn.latent import AlignmentProblem, ContextEmission, LinearSoftmaxHead, make_objective
from varattn.objective_options import objective_section
from varattn.training import BatchLoss, Task, TrainingConfig, Validation
from varattn.training.config import positive, spec
from varattn.training.registry import TaskSpec, get_task, register_task, task_names, unregister_task
from varattn.training.trained import RunParts, TrainedRun
from varattn.vocab import Vocab

from conftest import need, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS_FILE = "labels.txt"


# -- the task's "package": config, data, model, training task, trained run, evaluation -------------------------


@dataclass
class RegionsConfig(TrainingConfig):
    """The toy task's keys: the training core's, a mode and its objective options, the data's sizes."""

    mode: str = "var-enum"
    examples: int = spec(96, rule=positive)
    regions: int = spec(5, rule=positive)
    dim: int = spec(8, rule=positive)
    labels: int = spec(3, rule=positive)
    data_seed: int = 0
    batch_size: int = spec(16, rule=positive)
    objective: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        self.objective = objective_section(self.mode, self.objective)


def make_data(cfg: RegionsConfig, split: int) -> dict[str, torch.Tensor]:
    """Regions of random classes (class embedding + noise), a query near one region, that region's class."""
    g = torch.Generator().manual_seed(cfg.data_seed * 10 + split)
    n, r, d = cfg.examples, cfg.regions, cfg.dim
    classes = torch.randn(cfg.labels, d, generator=g)
    kinds = torch.randint(0, cfg.labels, (n, r), generator=g)
    memory = classes[kinds] + 0.3 * torch.randn(n, r, d, generator=g)
    target = torch.randint(0, r, (n,), generator=g)
    query = memory[torch.arange(n), target] + 0.1 * torch.randn(n, d, generator=g)
    return {"memory": memory, "query": query.unsqueeze(1), "gold": kinds[torch.arange(n), target].unsqueeze(1)}


class Pointer(nn.Module):
    """Prior p(z | x, query) by bilinear scores; q(z | x, query, y) also sees the label; f(y | x, z) by a head."""

    def __init__(self, dim: int, labels: int):
        super().__init__()
        self.prior = nn.Linear(dim, dim, bias=False)
        self.label = nn.Embedding(labels, dim)
        self.head = LinearSoftmaxHead(dim, dim, 16, labels, dropout=0.0)

    def problem(self, memory, query, gold) -> AlignmentProblem:
        keys = self.prior(query)
        prior = keys @ memory.transpose(1, 2)
        posterior = (keys + self.label(gold)) @ memory.transpose(1, 2)
        source_mask = torch.ones(memory.shape[:2], dtype=torch.bool)
        target_mask = torch.ones_like(gold, dtype=torch.bool)
        return AlignmentProblem(prior, source_mask, target_mask,
                                ContextEmission(self.head, query, memory, gold, target_mask), posterior)


def nll_sums(model: Pointer, objective, data: dict, batches) -> dict[str, float]:
    """Summed exact negative log-likelihood of the examples in ``batches``."""
    sums = {"nll": 0.0, "examples": 0.0}
    for index in batches:
        scores = objective.score(model.problem(*(data[k][index] for k in ("memory", "query", "gold"))))
        sums["nll"] -= float(scores.log_likelihood.sum())
        sums["examples"] += len(index)
    return sums


class RegionsTask(Task):
    name = "regions"

    def __init__(self, cfg: RegionsConfig):
        self.cfg = cfg
        self.objective = make_objective(cfg.mode, **cfg.objective)

    def prepare(self, run_dir: Path) -> None:
        self.train, self.valid = make_data(self.cfg, 0), make_data(self.cfg, 1)

    def save(self, run_dir: Path) -> dict[str, Any]:
        Vocab([f"class-{i}" for i in range(self.cfg.labels)]).save(run_dir / LABELS_FILE)
        return {"model": {"dim": self.cfg.dim, "labels": self.cfg.labels}}

    def load(self, run_dir: Path, info: dict[str, Any]) -> None:
        self.prepare(run_dir)

    def build_model(self) -> nn.Module:
        return Pointer(self.cfg.dim, self.cfg.labels)

    def train_batches(self, epoch: int):
        order = torch.randperm(self.cfg.examples, generator=torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch))
        return list(order.split(self.cfg.batch_size))

    def loss(self, model: nn.Module, batch, step: int) -> BatchLoss:
        self.objective.set_step(step)
        terms = self.objective.loss(model.problem(*(self.train[k][batch] for k in ("memory", "query", "gold"))))
        return BatchLoss(terms.surrogate, float(len(batch)), terms.totals())

    def valid_batches(self):
        return list(torch.arange(self.cfg.examples).split(32))

    def valid_sums(self, model: nn.Module, batches) -> dict[str, float]:
        return nll_sums(model, self.objective, self.valid, batches)

    def valid_result(self, sums: dict[str, float]) -> Validation:
        nll = sums["nll"] / sums["examples"]
        return Validation({"nll": nll, "examples": sums["examples"]}, nll, f"valid nll {nll:.4f}")


@dataclass
class TrainedRegions(TrainedRun):
    labels: Vocab

    @torch.no_grad()
    def evaluate(self, limit: int | None = None) -> dict:
        data = make_data(self.config, 1)
        n = min(limit or self.config.examples, self.config.examples)
        sums = nll_sums(self.model, self.objective, data, list(torch.arange(n).split(32)))
        return {"nll": sums["nll"] / sums["examples"], "examples": int(sums["examples"]), "mode": self.mode}


def open_regions(parts: RunParts) -> TrainedRegions:
    model = Pointer(parts.model["dim"], parts.model["labels"])
    return TrainedRegions(run_dir=parts.run_dir, config=parts.config, model=model, objective=parts.objective,
                          meta=parts.load_weights(model), labels=Vocab.load(parts.run_dir / LABELS_FILE))


def evaluate_flags(p) -> None:
    p.add_argument("--limit", type=int, help="only the first N examples")  # VQA has it too: one flag serves both


def evaluate_regions(trained: TrainedRegions, args) -> tuple[dict, list[str]]:
    result = trained.evaluate(args.limit)
    return result, [f"mode {result['mode']} | {result['examples']} examples | exact NLL {result['nll']:.4f}"]


def train_flags(p) -> None:
    p.add_argument("--examples", type=int, help="examples per split")


# -- the one registration --------------------------------------------------------------------------------------

REGIONS = TaskSpec(name="regions", title="toy regions", config=RegionsConfig, task=RegionsTask,
                   open_run=open_regions, evaluate=evaluate_regions, evaluate_flags=evaluate_flags,
                   train_flags=train_flags)


@pytest.fixture(autouse=True)
def regions_task():
    varattn.register_shipped_tasks()  # the shipped tasks first, as the CLI has them
    register_task(REGIONS)
    yield REGIONS
    unregister_task(REGIONS.name)


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


QUIET = ["--threads", 1, "--device", "cpu", "--no-progress", "--no-tensorboard"]


def metrics(run: Path) -> list[dict]:
    drop = ("tokens_per_s",)
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- the tests ---------------------------------------------------------------------------------------------------


def test_lookup_by_name_and_a_one_line_error_listing_the_names(capsys):
    assert task_names() == ["nmt", "regions", "vqa"]
    assert get_task("regions") is REGIONS
    with pytest.raises(VarattnError, match=r"unknown task 'nope' \(the tasks: nmt, regions, vqa\)"):
        get_task("nope")
    code, _, err = cli(capsys, "train", "--task", "nope")
    assert code == 2 and "unknown task 'nope'" in one_line_error(err) and "nmt, regions, vqa" in err
    with pytest.raises(VarattnError, match="already registered"):
        register_task(TaskSpec(name="regions", config=RegionsConfig, task=RegionsTask, open_run=open_regions,
                               evaluate=evaluate_regions))


def test_a_third_task_trains_resumes_loads_and_evaluates_through_the_commands(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    code, out, _ = cli(capsys, "train", "--task", "regions", "--examples", 64, "--max-steps", 8, "--eval-every", 4,
                       "--out", straight, "--set", "log_every=1", *QUIET)
    assert code == 0 and out.startswith("var-enum: step 8 |") and f"run: {straight}" in out
    assert json.loads((straight / "run.json").read_text())["task"] == "regions"
    # stopped after 4 updates, then resumed: the same numbers as the run that went straight through
    assert cli(capsys, "train", "--task", "regions", "--examples", 64, "--max-steps", 4, "--eval-every", 4,
               "--out", split, "--set", "log_every=1", *QUIET)[0] == 0
    code, out, _ = cli(capsys, "train", "--resume", split, "--max-steps", 8, *QUIET)
    assert code == 0 and "step 8" in out
    assert metrics(split) == metrics(straight)
    weights = [(run / "best" / "weights.safetensors").read_bytes() for run in (split, straight)]
    assert weights[0] == weights[1]

    trained = varattn.load(split, device="cpu")
    assert isinstance(trained, TrainedRegions) and trained.labels.itos == ["class-0", "class-1", "class-2"]
    assert trained.mode == "var-enum" and trained.meta["step"] == 8
    code, out, _ = cli(capsys, "evaluate", split, "--json", "--limit", 40, "--device", "cpu")
    assert code == 0 and json.loads(out) == trained.evaluate(40)
    code, out, _ = cli(capsys, "evaluate", split, "--device", "cpu")
    assert code == 0 and out.startswith("mode var-enum | 64 examples | exact NLL")
    best = [r for r in metrics(straight) if r.get("split") == "valid"]
    assert json.loads(cli(capsys, "evaluate", straight, "--json")[1])["nll"] == pytest.approx(
        min(r["nll"] for r in best), rel=1e-5)


def test_the_config_file_names_the_task(tmp_path, capsys):
    config = tmp_path / "regions.yaml"
    config.write_text("task: regions\nmode: soft\nexamples: 32\nmax_steps: 2\n")
    code, out, _ = cli(capsys, "train", "--config", config, "--out", tmp_path / "run", *QUIET)
    assert code == 0 and out.startswith("soft: step 2")
    code, _, err = cli(capsys, "train", "--config", config, "--task", "nmt", "--out", tmp_path / "other", *QUIET)
    assert code == 2 and "is for the regions task, not for nmt" in one_line_error(err)


def test_flags_of_another_task_are_refused_by_name(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--task", "regions", "--train", "data/x", "--out", tmp_path / "run", *QUIET)
    assert code == 2 and "--train is for nmt runs, not for this regions run" in one_line_error(err)
    assert not (tmp_path / "run").exists()
    assert cli(capsys, "train", "--task", "regions", "--examples", 32, "--max-steps", 1, "--out", tmp_path / "run",
               *QUIET)[0] == 0
    code, _, err = cli(capsys, "evaluate", tmp_path / "run", "--topk", 2)
    assert code == 2 and "--topk is for nmt runs, not for this regions run" in one_line_error(err)
    code, _, err = cli(capsys, "train", "--resume", tmp_path / "run", "--examples", 40)
    assert code == 2 and "drop --examples" in one_line_error(err)
    code, _, err = cli(capsys, "translate", tmp_path / "run")
    assert code == 2 and "holds a REGIONS run" in one_line_error(err)


def test_a_run_of_an_unregistered_task_is_a_one_line_error(tmp_path, capsys):
    assert cli(capsys, "train", "--task", "regions", "--examples", 32, "--max-steps", 1, "--out", tmp_path / "run",
               *QUIET)[0] == 0
    unregister_task("regions")
    code, _, err = cli(capsys, "evaluate", tmp_path / "run")
    assert code == 2 and "unknown task 'regions' in" in one_line_error(err) and "(the tasks: nmt, vqa)" in err
    with pytest.raises(VarattnError, match="unknown task 'regions'"):
        varattn.load(tmp_path / "run")


def test_vqa_runs_train_and_evaluate_through_the_shared_commands(tmp_path, capsys, monkeypatch):
    """``varattn train --config easy`` is a VQA run (the config names its task); ``varattn evaluate`` and the
    ``vqa evaluate`` alias give the same figures."""
    need("easy_vqa", "vqa")
    need("PIL", "vqa")
    monkeypatch.setenv("VARATTN_CACHE", str(tmp_path / "easy-vqa-cache"))
    tiny = ["data.limit_train=64", "data.valid_images=4", "data.limit_test=20", "model.cnn_channels=[4, 4, 8]",
            "model.embed_dim=8", "model.question_hidden=8", "model.attention_dim=8", "model.output_hidden=16",
            "model.answer_embed_dim=4", "model.inference_hidden=8"]
    run = tmp_path / "run"
    sets = [a for s in tiny for a in ("--set", s)]
    code, out, _ = cli(capsys, "train", "--config", "easy", "--max-steps", 1, "--out", run, *sets, *QUIET)
    assert code == 0 and "validation questions" in out
    assert json.loads((run / "run.json").read_text())["task"] == "vqa"
    unified = json.loads(cli(capsys, "evaluate", run, "--json", "--limit", 10, "--device", "cpu")[1])
    alias = json.loads(cli(capsys, "vqa", "evaluate", run, "--json", "--limit", 10, "--device", "cpu")[1])
    assert unified == alias and unified["questions"] == 10
    code, _, err = cli(capsys, "train", "--resume", run, "--batch-tokens", 100)
    assert code == 2 and "--batch-tokens is for nmt runs, not for this vqa run" in one_line_error(err)
