"""The training loop: read top to bottom.

One update: build the batch's alignment problem, take the mode's surrogate loss (summed over
tokens, divided by the number of sentences as in the paper), skip the update if the loss or
gradient norm is not finite, clip the gradient norm, take an Adam step. After every epoch
(or every ``eval_every`` updates) the validation set is scored exactly; the learning rate is
halved when the validation metric is worse than the best so far (from ``decay_start_epoch``
on); ``best/``, ``last/`` and ``resume/`` are written atomically.

``resume/`` is also written every ``save_every`` updates. It holds everything the numbers depend
on -- model, Adam state, learning rate, step, epoch, position in the epoch's batch order, best
metric, the open train-record window and the torch / python / numpy RNG states -- so an
interrupted run continued with ``--resume`` ends bit-identical to one that was never stopped, and
``metrics.jsonl`` is cut back to what it held at that save. See docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from varattn.checkpoint import (
    backup_path,
    flatten_state,
    load_checkpoint,
    load_json,
    save_checkpoint,
    save_json,
    unflatten_state,
)
from varattn.data.corpus import read_lines, resolve_pair
from varattn.device import check_precision, precision_context, resolve_device
from varattn.errors import VarattnError
from varattn.latent import make_objective
from varattn.nmt.config import TrainConfig
from varattn.nmt.data import EncodedPairs, RunData, encode_pairs, load_run_data, prepare_run_data
from varattn.nmt.evaluate import evaluate
from varattn.nmt.model import LatentAlignmentNMT
from varattn.nmt.run import RUN_FILE, save_model, save_run_files

log = logging.getLogger("varattn")

_EMPTY_WINDOW = {"nll": 0.0, "tokens": 0.0, "kl": 0.0}
#: config keys --resume may change: they do not alter the numbers of the steps already taken
RESUMABLE_KEYS = ("max_steps", "epochs", "max_minutes", "save_every", "threads", "device")
RESUME_DIR = "resume"
METRICS_FILE = "metrics.jsonl"


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """The paper's Adam (betas 0.9, 0.999, eps 1e-8), fused where PyTorch has the kernel.

    ``fused=True`` updates every parameter in one kernel instead of a loop of about ten passes
    over the parameters: 3-4x less optimizer time on the CPU (+6-8 % training speed at the
    iwslt14 sizes), the same update up to float rounding. It needs floating parameters on
    the CPU or a CUDA device; anything else gets the plain implementation.
    """
    params = list(model.parameters())
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fusable or None)


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
    #: step of the latest validation (-1: none yet); a run whose target is reached and validated is finished
    valid_step: int = -1
    #: sums over the updates since the last train record (nll, tokens, kl)
    window: dict = field(default_factory=lambda: dict(_EMPTY_WINDOW))
    #: size of metrics.jsonl when this state was saved; --resume cuts the file back to it
    metrics_bytes: int | None = None
    #: the latest validation record (what ``train`` returns)
    last_valid: dict | None = None
    #: sha256 of the training and validation pairs as ids: the batch order of a resumed run depends on them
    data_sha256: str | None = None



def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every random generator training draws from: torch's CPU one, CUDA's when in use, Python's, numpy's."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") and torch.cuda.is_available():  # a run moved to another machine keeps what fits
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def _valid_metric(result: dict) -> float:
    """What the learning-rate schedule and best checkpoint follow: exp(-ELBO) where defined."""
    return result["elbo_ppl"] if result.get("elbo_ppl") is not None else result["ppl"]


class MetricsLog:
    """Appends records to ``metrics.jsonl`` and mirrors numbers to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, purge_step: int | None = None):
        self.path = run_dir / METRICS_FILE
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step drops events a crashed run logged after its last resume/ save
                self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)
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


def _describe(totals: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in totals.items())


def _comparable(cfg_dict: dict) -> dict:
    """A config as JSON would give it back (tuples become lists), defaults filled in."""
    return json.loads(json.dumps(TrainConfig.from_dict(cfg_dict).to_dict()))


class Trainer:
    """Trains one model in one mode; see the module docstring for the recipe.

    ``resume=True`` continues ``run_dir`` from its ``resume/`` checkpoint. Only the keys in
    ``RESUMABLE_KEYS`` of ``cfg`` may differ from the run's ``run.json`` (which is then updated).
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool | None = None,
                 tensorboard: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.resumed = resume
        self.state = TrainerState(lr=cfg.lr)
        self.device = resolve_device(cfg.device)  # a missing GPU fails here, before anything is written
        check_precision(self.device, cfg.precision)  # so does bf16 where the device has no bf16 kernels
        if resume:
            stored_cfg = self._check_resumable()
            tensors, skeleton = self._read_resume()  # sets self.state
            if self.finished():
                st = self.state
                raise VarattnError(
                    f"{self.run_dir} has already finished: it stopped after step {st.step} ({st.epoch} complete "
                    f"epochs) with max_steps={cfg.max_steps} and epochs={cfg.epochs}; to train further, resume "
                    "with a larger --max-steps or --epochs")
        else:
            check_corpora(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        set_seed(cfg.seed)
        if resume:
            self._build(load_run_data(cfg, self.run_dir))
            self._apply_resume(tensors, skeleton)
            if stored_cfg != _comparable(cfg.to_dict()):  # a new --max-steps or --epochs: later resumes keep it
                info = load_json(self.run_dir / RUN_FILE)
                info["config"] = cfg.to_dict()
                save_json(self.run_dir / RUN_FILE, info)
            log.info("resuming at step %d (epoch %d, batch %d)", self.state.step, self.state.epoch + 1,
                     self.state.batch_in_epoch)
        else:
            if self.run_dir.exists() and not self.run_dir.is_dir():
                raise VarattnError(f"{self.run_dir} is a file; --out needs a directory")
            created = not self.run_dir.exists()
            try:
                before = set() if created else {p.name for p in self.run_dir.iterdir()}
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise VarattnError(f"cannot create the run directory {self.run_dir}: {exc.strerror or exc}") from None
            try:
                self._build(prepare_run_data(cfg, self.run_dir))
            except BaseException:
                self._remove_partial_start(created, before)
                raise
            save_run_files(self.run_dir, cfg, self.model_cfg, self.data.src_seg, self.data.tgt_seg,
                           self.data.src_vocab, self.data.tgt_vocab)
        self.metrics = MetricsLog(self.run_dir, tensorboard, purge_step=self.state.step + 1 if resume else None)
        threads = f" ({torch.get_num_threads()} threads)" if self.device.type == "cpu" else ""
        log.info("device: %s%s", self.device, threads)
        self._timer_start, self._timer_tokens = time.perf_counter(), 0

    def _build(self, data: RunData) -> None:
        cfg = self.cfg
        self.data = data
        for pairs in (data.train, data.valid):
            if pairs.summary:
                log.info(pairs.summary)
        if len(data.train) == 0:
            raise VarattnError("no training pairs left after filtering")
        if len(data.valid) == 0:
            raise VarattnError("no validation pairs left after filtering")
        self.objective = make_objective(cfg.mode, **cfg.objective)
        self.model_cfg = cfg.model_config(len(data.src_vocab), len(data.tgt_vocab))
        model = LatentAlignmentNMT(self.model_cfg, with_inference=self.objective.uses_posterior)
        self.model = model.to(self.device)  # before the optimizer, whose state follows the parameters
        self.optimizer = make_optimizer(self.model, cfg.lr)
        self.train_ids = encode_pairs(data.train, data.src_vocab, data.tgt_vocab)
        valid_ids = encode_pairs(data.valid, data.src_vocab, data.tgt_vocab)
        self.valid_batches = valid_ids.batches(cfg.valid_batch_size, shuffle=False)
        fingerprint = _fingerprint(self.train_ids, valid_ids)
        if self.state.data_sha256 is None:
            self.state.data_sha256 = fingerprint
        elif self.state.data_sha256 != fingerprint:
            raise VarattnError(f"cannot resume {self.run_dir}: the training or validation data changed since the "
                               "run started")

    def _remove_partial_start(self, created: bool, before: set[str]) -> None:
        """A fresh run failed while preparing its data: delete the files it wrote (sentencepiece models)."""
        for path in self.run_dir.iterdir():
            if path.name not in before and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
        if created and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()

    # -- checkpoints -------------------------------------------------------------------------
    def _check_resumable(self) -> dict:
        """Fail early, with one clear line, when ``run_dir`` cannot be resumed with ``self.cfg``."""
        run_dir = self.run_dir
        if not (run_dir / RUN_FILE).is_file():
            raise VarattnError(f"nothing to resume in {run_dir} (no {RUN_FILE})")
        resume_dir = run_dir / RESUME_DIR
        if not resume_dir.is_dir() and not backup_path(resume_dir).is_dir():
            raise VarattnError(f"nothing to resume in {run_dir}: it has no {RESUME_DIR}/ checkpoint (training "
                               "stopped before its first save); delete it and start the run again")
        info = load_json(run_dir / RUN_FILE)
        if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
            raise VarattnError(f"{run_dir / RUN_FILE} is corrupted (no config)")
        stored = _comparable(info["config"])
        current = _comparable(self.cfg.to_dict())
        changed = [k for k in current if k not in RESUMABLE_KEYS and stored.get(k) != current[k]]
        if changed:
            raise VarattnError(
                f"cannot resume {run_dir} with a different configuration ("
                + "; ".join(f"{k}: {stored.get(k)!r} in {RUN_FILE}, {current[k]!r} now" for k in changed)
                + f"); only {', '.join(RESUMABLE_KEYS)} may change")
        return stored

    def _save_resume(self) -> None:
        metrics = self.run_dir / METRICS_FILE
        self.state.metrics_bytes = metrics.stat().st_size if metrics.exists() else 0
        state = {"optimizer": self.optimizer.state_dict(), "rng": rng_state()}
        tensors, skeleton = flatten_state(state)
        model = {f"model/{k}": v.detach() for k, v in self.model.state_dict().items()}
        counters = dict(self.state.__dict__)
        save_checkpoint(self.run_dir / RESUME_DIR, {**model, **tensors}, {"skeleton": skeleton, "state": counters})

    def _read_resume(self) -> tuple[dict, dict]:
        """Read ``resume/``: set ``self.state``, return the tensors and the skeleton of the rest."""
        where = self.run_dir / RESUME_DIR
        tensors, meta = load_checkpoint(where)
        try:
            skeleton, counters = meta["skeleton"], meta["state"]
            known = {k: v for k, v in counters.items() if k in TrainerState.__dataclass_fields__}
            self.state = TrainerState(**known)
        except (KeyError, TypeError, AttributeError) as exc:
            raise VarattnError(f"checkpoint {where} is corrupted (bad trainer state: {exc})") from None
        return tensors, skeleton

    def _apply_resume(self, tensors: dict, skeleton: dict) -> None:
        """Model, Adam, learning rate and RNG states from ``resume/``; metrics.jsonl cut back to that save."""
        where = self.run_dir / RESUME_DIR
        model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        try:
            self.model.load_state_dict(model)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VarattnError(f"checkpoint {where} does not fit the model of {self.run_dir / RUN_FILE} "
                               f"({first})") from None
        rest = {k: v for k, v in tensors.items() if not k.startswith("model/")}
        state = unflatten_state(rest, skeleton)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise VarattnError(f"checkpoint {where} is corrupted (optimizer or RNG state: {exc})") from None
        for group in self.optimizer.param_groups:
            group["lr"] = self.state.lr
        self._cut_metrics()

    def _cut_metrics(self) -> None:
        """Drop the metric records a crashed run wrote after the state being resumed was saved."""
        path, keep = self.run_dir / METRICS_FILE, self.state.metrics_bytes
        if keep is None or not path.exists():
            return
        size = path.stat().st_size
        if size > keep:
            with open(path, "rb") as f:
                f.seek(keep)
                dropped = f.read().count(b"\n")
            os.truncate(path, keep)
            log.info("%s: dropped %d record(s) written after the last save", METRICS_FILE, dropped)
        elif size < keep:
            log.warning("%s is shorter than when %s/ was saved; records may be missing", METRICS_FILE, RESUME_DIR)

    def target_reached(self) -> bool:
        cfg, st = self.cfg, self.state
        return st.epoch >= cfg.epochs or (cfg.max_steps is not None and st.step >= cfg.max_steps)

    def finished(self) -> bool:
        """Target reached and validated there: nothing left to do."""
        return self.target_reached() and self.state.valid_step == self.state.step

    # -- evaluation --------------------------------------------------------------------------
    def validate(self) -> dict:
        # Validation draws from the RNG (sampling modes): keep training's stream untouched.
        saved = rng_state()
        was_training = self.model.training
        result = evaluate(self.model, self.objective, self.valid_batches)
        self.model.train(was_training)
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
        st.valid_step, st.last_valid = st.step, record
        self._save_resume()
        return record

    # -- one update --------------------------------------------------------------------------
    def update(self, batch) -> dict | None:
        """One optimizer step on ``batch``; returns totals, or None when the step was skipped.

        A step whose loss or gradient norm is not finite changes nothing: no optimizer step (Adam's
        moments and step count stay as they were), gradients dropped. It is counted in
        ``skipped_steps`` and logged; ``max_bad_steps`` of them in a row stop training.
        """
        st = self.state
        self.objective.set_step(st.step)
        self.optimizer.zero_grad(set_to_none=True)
        with precision_context(self.device, self.cfg.precision):
            terms = self.model.loss(batch, self.objective)
        loss = terms.surrogate / len(batch)
        totals = terms.totals()
        bad = not bool(torch.isfinite(loss))
        if not bad:
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
            bad = not bool(torch.isfinite(norm))
            if bad:
                totals = {**totals, "grad_norm": float(norm)}
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            st.bad_steps += 1
            st.consecutive_bad += 1
            log.warning("step %d: non-finite loss or gradient, update skipped (%d skipped so far; %s)",
                        st.step + 1, st.bad_steps, _describe(totals))
            if st.consecutive_bad >= self.cfg.max_bad_steps:
                raise VarattnError(
                    f"training stopped at step {st.step + 1}: {st.consecutive_bad} consecutive non-finite steps "
                    f"(max_bad_steps={self.cfg.max_bad_steps}); last loss terms: {_describe(totals)}; lower the "
                    f"learning rate or check the data")
            return None
        st.consecutive_bad = 0
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
        self._timer_start, self._timer_tokens = time.perf_counter(), 0
        self.model.train()
        deadline = None if cfg.max_minutes is None else time.monotonic() + 60 * cfg.max_minutes
        try:
            while not self.target_reached():
                batches = self.epoch_batches(st.epoch)
                while st.batch_in_epoch < len(batches):
                    if cfg.max_steps is not None and st.step >= cfg.max_steps:
                        break
                    if deadline is not None and time.monotonic() > deadline:
                        log.info("time limit of %s minutes reached at step %d", cfg.max_minutes, st.step)
                        break
                    totals = self.update(batches[st.batch_in_epoch])
                    st.batch_in_epoch += 1
                    st.step += 1
                    bar.update(1)
                    if totals is not None:
                        for key in st.window:
                            st.window[key] += totals.get(key, 0.0)
                        self._timer_tokens += int(totals["tokens"])
                    if st.step % cfg.log_every == 0 or st.step == total:
                        rec = self._train_record()
                        bar.set_postfix(loss=f"{rec['loss']:.3f}", ppl=f"{rec['ppl']:.2f}",
                                        tok_s=f"{rec['tokens_per_s']:.0f}")
                    if cfg.eval_every and st.step % cfg.eval_every == 0:
                        self._log_valid(bar)
                    elif cfg.save_every and st.step % cfg.save_every == 0:
                        self._save_resume()
                else:
                    st.epoch += 1
                    st.batch_in_epoch = 0
                    if not cfg.eval_every:
                        self._log_valid(bar)
                    continue
                break  # max_steps or the time limit reached inside the epoch
            if st.valid_step != st.step or st.last_valid is None:
                self._log_valid(bar)
        finally:
            bar.close()
            self.metrics.close()
        return st.last_valid

    def _train_record(self) -> dict:
        """Write the train record of the updates since the last one (the window), and start a new window."""
        st, window = self.state, self.state.window
        n = max(window["tokens"], 1.0)
        elapsed = max(time.perf_counter() - self._timer_start, 1e-9)
        rec = {
            "split": "train", "step": st.step, "epoch": st.epoch + 1,
            "loss": window["nll"] / n, "ppl": math.exp(min(window["nll"] / n, 700)),
            "kl": window["kl"] / n, "tokens_per_s": self._timer_tokens / elapsed, "lr": st.lr,
            "skipped_steps": st.bad_steps,
        }
        self.metrics.write(rec)
        st.window = dict(_EMPTY_WINDOW)
        self._timer_start, self._timer_tokens = time.perf_counter(), 0
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
