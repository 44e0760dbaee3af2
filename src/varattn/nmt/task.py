"""Translation as a training-core task: ``varattn.training.task.Task`` for the NMT model."""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from varattn.errors import VarattnError
from varattn.latent import make_objective
from varattn.nmt.batching import Batch
from varattn.nmt.builder import build_model
from varattn.nmt.config import TrainConfig
from varattn.nmt.corpora.corpus import read_lines, resolve_pair
from varattn.nmt.data import EncodedPairs, RunData, encode_pairs, load_run_data, prepare_run_data
from varattn.nmt.evaluate import evaluation_figures, evaluation_sums
from varattn.training.task import BatchLoss, Heatmap, Task, Validation

log = logging.getLogger("varattn")

#: validation pairs drawn as TensorBoard heatmaps (the first ones of the validation set)
HEATMAP_PAIRS = 3


def check_corpora(cfg: TrainConfig) -> None:
    """Read every corpus file of ``cfg`` once, before a run writes anything.

    Missing files, invalid UTF-8 (named by file and line) and parallel files of different lengths
    raise VarattnError here rather than after minutes of sentencepiece training.
    """
    if cfg.train is None:
        return
    for prefix in (cfg.train, cfg.valid):
        src_path, tgt_path = resolve_pair(prefix, cfg.src_lang, cfg.tgt_lang)
        n_src, n_tgt = len(read_lines(src_path)), len(read_lines(tgt_path))
        if n_src != n_tgt:
            raise VarattnError(f"parallel files differ in length: {src_path} has {n_src} lines but {tgt_path} has "
                               f"{n_tgt} lines")


def _fingerprint(*corpora: EncodedPairs) -> str:
    digest = hashlib.sha256()
    for corpus in corpora:
        digest.update(b"corpus")
        for sentence in (*corpus.src, *corpus.tgt):
            digest.update(len(sentence).to_bytes(8, "little"))
            digest.update(array("q", sentence).tobytes())
    return digest.hexdigest()


def valid_metric(figures: dict) -> float:
    """What the learning-rate schedule and best checkpoint follow: exp(-ELBO) where defined, else perplexity."""
    return figures["elbo_ppl"] if figures.get("elbo_ppl") is not None else figures["ppl"]


class NMTTask(Task):
    """The latent-alignment translation model of one mode, on the corpora (or synthetic task) of ``cfg``."""

    name = "nmt"
    unit = "tokens"
    unit_short = "tok"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.objective = make_objective(cfg.mode, **cfg.objective)

    # -- run files --------------------------------------------------------------------------------
    def prepare(self, run_dir: Path) -> None:
        check_corpora(self.cfg)
        self._use(prepare_run_data(self.cfg, run_dir))

    def save(self, run_dir: Path) -> dict[str, Any]:
        self.data.src_vocab.save(run_dir / "vocab.src.txt")
        self.data.tgt_vocab.save(run_dir / "vocab.tgt.txt")
        return {"model": self.model_cfg.to_dict(),
                "segmentation": {"src": self.data.src_seg.to_json(), "tgt": self.data.tgt_seg.to_json()}}

    def load(self, run_dir: Path, info: dict[str, Any]) -> None:
        self._use(load_run_data(self.cfg, run_dir))

    def _use(self, data: RunData) -> None:
        for pairs in (data.train, data.valid):
            if pairs.summary:
                log.info(pairs.summary)
        if len(data.train) == 0:
            raise VarattnError("no training pairs left after filtering")
        if len(data.valid) == 0:
            raise VarattnError("no validation pairs left after filtering")
        self.data = data
        self.model_cfg = self.cfg.model_config(len(data.src_vocab), len(data.tgt_vocab))
        self.train_ids = encode_pairs(data.train, data.src_vocab, data.tgt_vocab)
        self.valid_ids = encode_pairs(data.valid, data.src_vocab, data.tgt_vocab)

    def fingerprint(self) -> str:
        return _fingerprint(self.train_ids, self.valid_ids)

    # -- model and training -----------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_model(self.model_cfg, self.objective)

    def train_batches(self, epoch: int) -> Sequence[Batch]:
        cfg = self.cfg
        return self.train_ids.batches(cfg.batch_size, cfg.batch_tokens, shuffle=True, seed=cfg.seed * 1000 + epoch)

    def loss(self, model: nn.Module, batch: Batch, step: int) -> BatchLoss:
        """The mode's surrogate summed over the batch, normalised by its sentences (the paper's recipe).

        Figures: ``nll`` (-ELBO, or its estimate), ``kl`` (0 for modes without q), ``tokens``, and the
        objective's other per-token figures summed (entropies, the relaxed model's precisions, ...).
        """
        self.objective.set_step(step)
        terms = model.loss(batch, self.objective)
        figures = {key: float(value.sum()) for key, value in terms.per_token.items()}
        figures.setdefault("kl", 0.0)
        figures["tokens"] = float(terms.target_mask.sum())
        return BatchLoss(terms.surrogate, len(batch), figures)

    # -- validation -------------------------------------------------------------------------------
    def valid_batches(self) -> Sequence[Batch]:
        return self.valid_ids.batches(self.cfg.valid_batch_size, shuffle=False)

    def valid_sums(self, model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        return evaluation_sums(model, self.objective, batches)

    def valid_result(self, sums: dict[str, float]) -> Validation:
        figures = evaluation_figures(sums, self.objective)
        elbo = f", elbo ppl {figures['elbo_ppl']:.3f}" if figures.get("elbo_ppl") is not None else ""
        summary = (f"valid ppl {figures['ppl']:.3f}{elbo}, accuracy {figures['accuracy']:.3f}, "
                   f"prior entropy {figures['prior_entropy']:.3f}")
        return Validation(figures, valid_metric(figures), summary)

    def heatmaps(self, model: nn.Module) -> list[Heatmap]:
        """Prior (and posterior) alignments of the first ``HEATMAP_PAIRS`` validation pairs."""
        n = min(HEATMAP_PAIRS, len(self.valid_ids.src))
        batch = self.valid_ids.collate(list(range(n)))
        problem = model.problem(batch, self.objective.uses_posterior)
        prior = problem.prior().log_probs.exp()  # (B, T, S)
        posterior = problem.posterior().log_probs.exp() if problem.posterior_scores is not None else None
        out = []
        for i in range(n):
            t, s = int(batch.tgt_mask[i].sum()), int(batch.src_lengths[i])
            rows = [*self.data.valid.tgt[i], "</s>"][:t]
            cols = list(self.data.valid.src[i])[:s]
            out.append(Heatmap(f"valid-{i}", _numpy(prior[i, :t, :s]),
                               None if posterior is None else _numpy(posterior[i, :t, :s]), rows, cols))
        return out


def _numpy(x: torch.Tensor):
    return x.float().cpu().numpy()
