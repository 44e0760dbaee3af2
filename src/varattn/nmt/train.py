"""The training loop: read top to bottom.

One update: build the batch's alignment problem, take the mode's surrogate loss (summed over
tokens, divided by the number of sentences as in the paper), skip the update if the loss or
gradient norm is not finite, clip the gradient norm, take an Adam step. After every epoch
(or every ``eval_every`` updates) the validation set is scored exactly; the learning rate is
halved when the validation metric is worse than the best so far (from ``decay_start_epoch``
on); ``best/``, ``last/`` and ``resume/`` are written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from varattn.checkpoint import flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from varattn.errors import VarattnError
from varattn.latent import make_objective
from varattn.nmt.config import TrainConfig
from varattn.nmt.data import RunData, encode_pairs, prepare_run_data
from varattn.nmt.evaluate import evaluate
from varattn.nmt.model import LatentAlignmentNMT
from varattn.nmt.run import RUN_FILE, save_model, save_run_files

log = logging.getLogger("varattn")


@dataclass
class TrainerState:
    """Counters that ``--resume`` restores (with the optimizer and RNG states)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    lr: float = 0.0
    best_metric: float = math.inf
    bad_steps: int = 0
    consecutive_bad: int = 0
    history: list = field(default_factory=list)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _valid_metric(result: dict) -> float:
    """What the learning-rate schedule and best checkpoint follow: exp(-ELBO) where defined."""
    return result["elbo_ppl"] if result.get("elbo_ppl") is not None else result["ppl"]


class MetricsLog:
    """Appends records to ``metrics.jsonl`` and mirrors numbers to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                self.writer = None

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch") and math.isfinite(value):
                    self.writer.add_scalar(f"{record['split']}/{key}", value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Trainer:
    """Trains one model in one mode; see the module docstring for the recipe."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool | None = None,
                 tensorboard: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        set_seed(cfg.seed)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data: RunData = prepare_run_data(cfg, self.run_dir)
        for pairs in (self.data.train, self.data.valid):
            if pairs.summary:
                log.info(pairs.summary)
        if len(self.data.train) == 0:
            raise VarattnError("no training pairs left after filtering")
        self.objective = make_objective(cfg.mode, **cfg.objective)
        self.model_cfg = cfg.model_config(len(self.data.src_vocab), len(self.data.tgt_vocab))
        self.model = LatentAlignmentNMT(self.model_cfg, with_inference=self.objective.uses_posterior)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
        self.state = TrainerState(lr=cfg.lr)
        self.train_ids = encode_pairs(self.data.train, self.data.src_vocab, self.data.tgt_vocab)
        valid_ids = encode_pairs(self.data.valid, self.data.src_vocab, self.data.tgt_vocab)
        self.valid_batches = valid_ids.batches(cfg.valid_batch_size, shuffle=False)
        if resume:
            self._load_resume()
        else:
            save_run_files(self.run_dir, cfg, self.model_cfg, self.data.src_seg, self.data.tgt_seg,
                           self.data.src_vocab, self.data.tgt_vocab)
        self.metrics = MetricsLog(self.run_dir, tensorboard)

    # -- checkpoints -------------------------------------------------------------------------
    def _save_resume(self) -> None:
        state = {"optimizer": self.optimizer.state_dict(), "rng": rng_state()}
        tensors, skeleton = flatten_state(state)
        model = {f"model/{k}": v.detach() for k, v in self.model.state_dict().items()}
        counters = {k: v for k, v in self.state.__dict__.items()}
        save_checkpoint(self.run_dir / "resume", {**model, **tensors}, {"skeleton": skeleton, "state": counters})

    def _load_resume(self) -> None:
        tensors, meta = load_checkpoint(self.run_dir / "resume")
        model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        self.model.load_state_dict(model)
        rest = {k: v for k, v in tensors.items() if not k.startswith("model/")}
        state = unflatten_state(rest, meta["skeleton"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.state = TrainerState(**meta["state"])
        for group in self.optimizer.param_groups:
            group["lr"] = self.state.lr
        set_rng_state(state["rng"])
        log.info("resuming at step %d (epoch %d, batch %d)", self.state.step, self.state.epoch + 1,
                 self.state.batch_in_epoch)

    # -- evaluation --------------------------------------------------------------------------
    def validate(self) -> dict:
        # Validation draws from the RNG (sampling modes): keep training's stream untouched.
        saved = rng_state()
        result = evaluate(self.model, self.objective, self.valid_batches)
        set_rng_state(saved)
        metric = _valid_metric(result)
        st = self.state
        improved = metric < st.best_metric
        if not improved and st.epoch + 1 >= self.cfg.decay_start_epoch and math.isfinite(st.best_metric):
            st.lr *= self.cfg.lr_decay
            for group in self.optimizer.param_groups:
                group["lr"] = st.lr
        record = {"split": "valid", "step": st.step, "epoch": st.epoch + 1, "lr": st.lr, **result}
        self.metrics.write(record)
        meta = {"step": st.step, "epoch": st.epoch + 1, "mode": self.cfg.mode, "valid": result}
        if improved:
            st.best_metric = metric
            save_model(self.run_dir / "best", self.model, meta)
        save_model(self.run_dir / "last", self.model, meta)
        self._save_resume()
        return record

    # -- one update --------------------------------------------------------------------------
    def update(self, batch) -> dict | None:
        """One optimizer step on ``batch``; returns totals, or None when the step was skipped."""
        self.objective.set_step(self.state.step)
        self.optimizer.zero_grad(set_to_none=True)
        terms = self.model.loss(batch, self.objective)
        loss = terms.surrogate / len(batch)
        totals = terms.totals()
        bad = not torch.isfinite(loss)
        if not bad:
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
            bad = not torch.isfinite(norm)
        if bad:
            self.state.bad_steps += 1
            self.state.consecutive_bad += 1
            log.warning("step %d: non-finite loss or gradient, update skipped (%s)", self.state.step + 1,
                        ", ".join(f"{k}={v:.4g}" for k, v in totals.items()))
            if self.state.consecutive_bad >= self.cfg.max_bad_steps:
                raise VarattnError(
                    f"training stopped at step {self.state.step + 1}: {self.state.consecutive_bad} consecutive "
                    f"non-finite steps; last loss terms: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in totals.items()))
            return None
        self.state.consecutive_bad = 0
        self.optimizer.step()
        return totals

    # -- the loop ----------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list:
        cfg = self.cfg
        return self.train_ids.batches(cfg.batch_size, cfg.batch_tokens, shuffle=True, seed=cfg.seed * 1000 + epoch)

    def train(self) -> dict:
        cfg, st = self.cfg, self.state
        steps_per_epoch = len(self.epoch_batches(0))
        total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
        bar = tqdm(total=total, initial=min(st.step, total), unit="step", dynamic_ncols=True,
                   disable=(not sys.stderr.isatty()) if self.progress is None else not self.progress,
                   desc=f"train {cfg.mode}")
        window = {"nll": 0.0, "tokens": 0.0, "kl": 0.0}
        started, window_tokens = time.perf_counter(), 0
        last_valid: dict | None = None
        self.model.train()
        deadline = None if cfg.max_minutes is None else time.monotonic() + 60 * cfg.max_minutes
        while st.epoch < cfg.epochs and (cfg.max_steps is None or st.step < cfg.max_steps):
            batches = self.epoch_batches(st.epoch)
            while st.batch_in_epoch < len(batches):
                if cfg.max_steps is not None and st.step >= cfg.max_steps:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    log.info("time limit of %s minutes reached at step %d", cfg.max_minutes, st.step)
                    break
                batch = batches[st.batch_in_epoch]
                totals = self.update(batch)
                st.batch_in_epoch += 1
                st.step += 1
                bar.update(1)
                if totals is not None:
                    for key in window:
                        window[key] += totals.get(key, 0.0)
                    window_tokens += int(totals["tokens"])
                if st.step % 25 == 0 or st.step == total:
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    rec = self._train_record(window, window_tokens / elapsed)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", ppl=f"{rec['ppl']:.2f}",
                                    tok_s=f"{rec['tokens_per_s']:.0f}")
                    window = dict.fromkeys(window, 0.0)
                    started, window_tokens = time.perf_counter(), 0
                if cfg.eval_every and st.step % cfg.eval_every == 0:
                    last_valid = self._log_valid(bar)
                    self.model.train()
            else:
                st.epoch += 1
                st.batch_in_epoch = 0
                if not cfg.eval_every:
                    last_valid = self._log_valid(bar)
                    self.model.train()
                continue
            break  # max_steps reached inside the epoch
        if last_valid is None or last_valid["step"] != st.step:
            last_valid = self._log_valid(bar)
        bar.close()
        self.metrics.close()
        return last_valid

    def _train_record(self, window: dict, tokens_per_s: float) -> dict:
        n = max(window["tokens"], 1.0)
        rec = {
            "split": "train", "step": self.state.step, "epoch": self.state.epoch + 1,
            "loss": window["nll"] / n, "ppl": math.exp(min(window["nll"] / n, 700)),
            "kl": window["kl"] / n, "tokens_per_s": tokens_per_s, "lr": self.state.lr,
            "skipped_steps": self.state.bad_steps,
        }
        self.metrics.write(rec)
        return rec

    def _log_valid(self, bar) -> dict:
        rec = self.validate()
        elbo = f", elbo ppl {rec['elbo_ppl']:.3f}" if rec.get("elbo_ppl") is not None else ""
        bar.write(f"step {rec['step']}: valid ppl {rec['ppl']:.3f}{elbo}, accuracy {rec['accuracy']:.3f}, "
                  f"prior entropy {rec['prior_entropy']:.3f}, lr {rec['lr']:.2e}", file=sys.stderr)
        return rec


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool | None = None,
          tensorboard: bool = True) -> dict:
    """Train per ``cfg`` into ``run_dir`` (or continue it with ``resume``); returns the last validation record."""
    run_dir = Path(run_dir)
    if not resume and (run_dir / RUN_FILE).exists():
        raise VarattnError(f"{run_dir} already holds a run; use --resume to continue it or another --out")
    return Trainer(cfg, run_dir, resume=resume, progress=progress, tensorboard=tensorboard).train()
