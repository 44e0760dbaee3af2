"""The VQA task the training core trains (``varattn.training.task.Task``).

A training batch is a ``BatchSpec``: question indices and one answer per question, sampled in
proportion to its annotator count with a generator seeded from the config's seed and the epoch
(so a resumed run draws the same answers). Tensors are built, and region features read, when the
batch is used. Only questions with an in-vocabulary answer are trained on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from varattn.errors import VarattnError
from varattn.latent import make_objective
from varattn.training.task import BatchLoss, Heatmap, Task, Validation, model_device
from varattn.vqa.config import VQAConfig
from varattn.vqa.data import BatchSpec, make_batch
from varattn.vqa.datasets import WORD_SPECIALS, Prepared, prepare
from varattn.vqa.evaluate import figures, summed
from varattn.vqa.model import VQAModel, VQAModelConfig
from varattn.vqa.text import Vocab

WORDS_FILE = "vocab.words.txt"
ANSWERS_FILE = "vocab.answers.txt"
HEATMAP_EXAMPLES = 4


def batch_specs(indices: list[int], size: int) -> list[BatchSpec]:
    return [BatchSpec(indices[i : i + size]) for i in range(0, len(indices), size)]


class VQATask(Task):
    """easy-VQA or VQA 2.0 features, one latent region per question."""

    name = "vqa"
    unit = "questions"
    unit_short = "q"

    def __init__(self, cfg: VQAConfig):
        self.cfg = cfg
        self.data_cfg = cfg.data
        self.objective = make_objective(cfg.mode, **cfg.objective)
        self.data: Prepared | None = None
        self.model_cfg: VQAModelConfig | None = None

    # -- run files -----------------------------------------------------------------------------------
    def _read(self, words: Vocab | None = None, answers: Vocab | None = None) -> None:
        feature_dim = self.cfg.model.feature_dim
        self.data = prepare(self.data_cfg, feature_dim, words, answers)
        self.model_cfg = self.cfg.model_config(len(self.data.words), len(self.data.answers))
        if not self.data.train.answerable():
            raise VarattnError("no training question has an answer in the answer vocabulary")
        if len(self.data.valid) == 0:
            raise VarattnError("no validation questions")

    def prepare(self, run_dir: Path) -> None:
        self._read()

    def save(self, run_dir: Path) -> dict[str, Any]:
        self.data.words.save(run_dir / WORDS_FILE)
        self.data.answers.save(run_dir / ANSWERS_FILE)
        return {"model": self.model_cfg.to_dict()}

    def load(self, run_dir: Path, info: dict[str, Any]) -> None:
        words = Vocab.load(run_dir / WORDS_FILE, WORD_SPECIALS)
        answers = Vocab.load(run_dir / ANSWERS_FILE)
        self._read(words, answers)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for qs in (self.data.train, self.data.valid):
            digest.update(repr((qs.question_ids, qs.words, qs.answers, qs.image_ids)).encode())
        return digest.hexdigest()

    # -- model -----------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return VQAModel(self.model_cfg, with_inference=self.objective.uses_posterior,
                        with_precision=self.objective.needs_precision)

    # -- training --------------------------------------------------------------------------------------
    def train_batches(self, epoch: int) -> list[BatchSpec]:
        rng = np.random.default_rng([self.cfg.seed, epoch])
        order = np.asarray(self.data.train.answerable())
        order = order[rng.permutation(len(order))].tolist()
        specs = batch_specs(order, self.cfg.batch_size)
        for spec in specs:
            spec.answers = self.data.train.sample_answers(spec.index, rng)
        return specs

    def loss(self, model: nn.Module, batch: BatchSpec, step: int) -> BatchLoss:
        tensors = make_batch(self.data.train, batch, self.data.train_source).to(model_device(model))
        self.objective.set_step(step)
        enc = model.encode(tensors.words, tensors.lengths, tensors.regions)
        problem = model.problem(enc, tensors.answers, tensors.answer_mask, self.objective.uses_posterior)
        terms = self.objective.loss(problem)
        report = terms.totals()
        del report["tokens"]  # one answer per question: the unit is the question
        report[self.unit] = float(len(batch.index))
        return BatchLoss(terms.surrogate, float(len(batch.index)), report)

    # -- validation ------------------------------------------------------------------------------------
    def valid_batches(self) -> list[BatchSpec]:
        return batch_specs(list(range(len(self.data.valid))), self.cfg.valid_batch_size)

    def valid_sums(self, model: nn.Module, batches) -> dict[str, float]:
        tensors = (make_batch(self.data.valid, spec, self.data.valid_source) for spec in batches)
        return summed(model, self.objective, tensors, model_device(model))

    def valid_result(self, sums: dict[str, float]) -> Validation:
        result = figures(sums, self.objective)
        metric = result["elbo_nll"] if result["elbo_nll"] is not None else result["nll"]
        summary = f"valid accuracy {result['accuracy']:.4f}, NLL {result['nll']:.4f}"
        if result["elbo_nll"] is not None:
            summary += f", -ELBO {result['elbo_nll']:.4f}"
        return Validation(result, metric, summary)

    def heatmaps(self, model: nn.Module) -> list[Heatmap]:
        n = min(HEATMAP_EXAMPLES, len(self.data.valid))
        spec = BatchSpec(list(range(n)))
        batch = make_batch(self.data.valid, spec, self.data.valid_source).to(model_device(model))
        enc = model.encode(batch.words, batch.lengths, batch.regions)
        prior = model.prior(enc).probs.cpu().numpy()  # (B, 1, R)
        post = None
        if self.objective.uses_posterior:
            first = batch.answers[:, :1]
            post = torch.softmax(model.posterior_scores(enc, first).masked_fill(
                ~enc.region_mask.unsqueeze(1), float("-inf")), -1).cpu().numpy()  # (B, 1, R)
        out = []
        for b in range(n):
            real = int(enc.region_mask[b].sum())
            out.append(Heatmap(f"valid-{b}", prior[b, :, :real], None if post is None else post[b, :, :real],
                               rows=[self.data.valid.texts[b]], cols=[str(i) for i in range(real)]))
        return out
