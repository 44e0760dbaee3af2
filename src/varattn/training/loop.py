"""The training loop, read top to bottom.

One update: the task's loss terms of a batch (the surrogate summed over the batch, divided by its
normaliser -- the number of sentences, in the paper), skipped when the loss or the gradient norm is
not finite, the gradient norm clipped, one Adam step. The validation set is scored after every epoch
(and also every ``eval_every`` updates, and where ``max_steps`` or ``max_minutes`` stop the run); the
learning rate is halved when an epoch's validation metric is worse than the best of the earlier
epochs' (from ``decay_start_epoch`` on: the paper's rule; mid-epoch validations only watch and
checkpoint, see :func:`varattn.training.optim.next_lr`); ``best/``, ``last/`` and ``resume/`` are
written atomically. ``resume/`` is also written every ``save_every`` updates and when a SIGINT or
SIGTERM stops the run (:mod:`varattn.training.stop`); ``--resume`` continues bit-identically and
cuts ``metrics.jsonl`` back to what it held at that save. See docs/reliability.md.

Two ways in: :func:`start` for a fresh run, :func:`resume` for a run that stopped; both return a
:class:`Trainer` whose :meth:`Trainer.train` runs the loop: one update per step, the steps coming from
:meth:`Trainer._steps`, which ends the epochs and stops at the limits. The run directory itself (made,
locked, checked before resuming) is :mod:`varattn.training.rundir`'s job.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from varattn.checkpoint import save_checkpoint
from varattn.device import check_precision, precision_context, resolve_device
from varattn.errors import VarattnError
from varattn.training import distributed, rundir
from varattn.training.config import TrainingConfig
from varattn.training.distributed import World
from varattn.training.metrics import METRICS_FILE, MetricsLog, cut_metrics
from varattn.training.optim import inverse_sqrt_lr, make_optimizer, next_lr, set_lr
from varattn.training.run_info import RUN_FILE, read_run_info
from varattn.training.rundir_lock import RunDirLock
from varattn.training.state import RESUME_DIR, TrainerState, read_resume, rng_state, save_resume, set_rng_state
from varattn.training.stop import GracefulStop, TrainingStopped
from varattn.training.task import BatchLoss, Task

log = logging.getLogger("varattn")


def _describe(figures: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in figures.items())


class _Forward(torch.nn.Module):
    """The task's loss as a module's forward, so that DistributedDataParallel can wrap it."""

    def __init__(self, task: Task, model: torch.nn.Module):
        super().__init__()
        self.task, self.model = task, model

    def forward(self, batch, step: int) -> BatchLoss:
        return self.task.loss(self.model, batch, step)


class Trainer:
    """Trains ``task``'s model per ``cfg`` in ``run_dir``; build one with :func:`start` or :func:`resume`.

    On several processes (``world``), the loss goes through DistributedDataParallel; see
    :mod:`varattn.training.distributed`.
    """

    def __init__(self, task: Task, cfg: TrainingConfig, run_dir: Path, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, state: TrainerState, device: torch.device, metrics: MetricsLog,
                 progress: bool | None, world: World = distributed.SINGLE, lock: RunDirLock | None = None):
        self.task, self.cfg, self.run_dir = task, cfg, run_dir
        self.lock = lock  # the run directory's writer lock (rank 0), released when train() ends
        self.model, self.optimizer, self.state, self.device = model, optimizer, state, device
        self.metrics = metrics
        self.progress = progress if world.main else False
        self.world = world
        self.ddp = None
        if world.distributed:  # a collective: every rank builds its Trainer at the same point
            self.ddp = torch.nn.parallel.DistributedDataParallel(_Forward(task, model),
                                                                 find_unused_parameters=True)
        self.valid_batches = task.valid_batches()
        self.summary = ""  # the human line of the latest validation
        self.stop_agreed = False  # a data-parallel rank was asked to stop: all stop after this update
        self._timer_start, self._timer_count = time.perf_counter(), 0  # units since the last train record

    # -- one update ------------------------------------------------------------------------------
    def update(self, batch, weight: float = 1.0, stop: bool = False) -> dict | None:
        """One optimizer step on ``batch``; returns its report figures, or None when the step was skipped.

        A step whose loss or gradient norm is not finite changes nothing: no optimizer step (Adam's
        moments and step count stay as they were), gradients dropped. It is counted in
        ``skipped_steps`` and logged; ``max_bad_steps`` of them in a row stop training.

        Data-parallel: ``batch`` is this rank's share (``weight`` 0: a stand-in that only takes part in
        the all-reduce); the figures returned are summed over ranks, and ``stop`` (this rank was
        asked to stop) is shared into :attr:`stop_agreed`.
        """
        if self.world.distributed:
            return self._update_distributed(batch, weight, stop)
        st = self.state
        self.optimizer.zero_grad(set_to_none=True)
        with precision_context(self.device, self.cfg.precision):
            out = self.task.loss(self.model, batch, st.step)
        loss = out.surrogate / out.normaliser
        figures = out.figures
        bad = not bool(torch.isfinite(loss))
        self.stop_agreed = stop
        if not bad:
            loss.backward()
        return self._step(bad, figures)

    def _update_distributed(self, batch, weight: float, stop: bool) -> dict | None:
        """The update on N ranks: one all-reduce of [normaliser, non-finite flag, stop flag, figures] after the
        forward pass, then ``surrogate * N / global normaliser`` backward through DDP (which averages)."""
        st = self.state
        self.optimizer.zero_grad(set_to_none=True)
        with precision_context(self.device, self.cfg.precision):
            out = self.ddp(batch, st.step)
        keys = list(out.figures)
        local_bad = not bool(torch.isfinite(out.surrogate))
        shares = [out.normaliser * weight, float(local_bad), float(stop), *(out.figures[k] * weight for k in keys)]
        summed = distributed.sum_vector(shares, self.device)
        normaliser, bad, self.stop_agreed = summed[0], summed[1] > 0, summed[2] > 0
        figures = dict(zip(keys, summed[3:]))
        scale = 0.0 if bad or normaliser <= 0 else weight * self.world.size / normaliser
        (out.surrogate * scale).backward()  # always: every rank must join DDP's gradient all-reduce
        return self._step(bad, figures)

    def _step(self, bad: bool, figures: dict) -> dict | None:
        """Clip and step, or skip a non-finite update (see :meth:`update`)."""
        st = self.state
        if not bad:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
            bad = not bool(torch.isfinite(norm))
            if bad:
                figures = {**figures, "grad_norm": float(norm)}
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            st.bad_steps += 1
            st.consecutive_bad += 1
            log.warning("step %d: non-finite loss or gradient, update skipped (%d skipped so far; %s)",
                        st.step + 1, st.bad_steps, _describe(figures))
            if st.consecutive_bad >= self.cfg.max_bad_steps:
                raise VarattnError(
                    f"training stopped at step {st.step + 1}: {st.consecutive_bad} consecutive non-finite steps "
                    f"(max_bad_steps={self.cfg.max_bad_steps}); last loss terms: {_describe(figures)}; lower the "
                    f"learning rate or check the data")
            return None
        st.consecutive_bad = 0
        if self.cfg.lr_schedule == "inverse-sqrt":
            set_lr(self.optimizer, self.current_lr(st.step + 1))
        self.optimizer.step()
        return figures

    # -- the loop --------------------------------------------------------------------------------
    def target_reached(self) -> bool:
        """``epochs`` complete epochs or ``max_steps`` updates."""
        return self.state.target_reached(self.cfg)

    def finished(self) -> bool:
        """Target reached and validated there: nothing left to do."""
        return self.state.finished(self.cfg)

    def train(self) -> dict:
        """Train until ``max_steps``, ``epochs`` or ``max_minutes``; returns the last validation record.

        One update per step of :meth:`_steps`, which ends each epoch (validation, learning-rate schedule)
        when its batches run out and stops at the limits; a validation follows where the run stops
        unless one was just made. SIGINT / SIGTERM: the current update finishes, ``resume/`` is saved
        and :class:`~varattn.training.stop.TrainingStopped` is raised.
        """
        cfg, st, world = self.cfg, self.state, self.world
        steps_per_epoch = -(-len(self.task.train_batches(0)) // world.size)
        total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
        bar = tqdm(total=total, initial=min(st.step, total), unit="step", dynamic_ncols=True,
                   disable=(not sys.stderr.isatty()) if self.progress is None else not self.progress,
                   desc=f"train {self.run_dir.name}")
        self._timer_start, self._timer_count = time.perf_counter(), 0
        self.model.train()
        deadline = None if cfg.max_minutes is None else time.monotonic() + 60 * cfg.max_minutes
        try:
            with GracefulStop() as stop:
                for group, ends_epoch in self._steps(bar, stop, deadline):
                    self._train_step(group, ends_epoch, bar, stop, total)
                if st.valid_step != st.step or st.last_valid is None:
                    self._log_valid(bar)
        finally:
            try:
                bar.close()
                self.metrics.close()
            finally:
                self.release()
        return st.last_valid

    def _steps(self, bar, stop: GracefulStop, deadline: float | None) -> Iterator[tuple[list, bool]]:
        """The run's steps in order: this step's batches (one per rank) and whether they end the epoch.

        The caller takes the step (which advances ``state.batch_in_epoch``) before asking for the next
        one. An epoch whose batches have all been used ends here (:meth:`_end_epoch`), also when a
        resumed run stopped just before; the steps stop at the target, at ``max_steps`` and at the
        time limit.
        """
        st, size = self.state, self.world.size
        while not self.target_reached():
            batches = self.task.train_batches(st.epoch)
            while st.batch_in_epoch < len(batches):
                if self._limit_reached(deadline):
                    return
                group = batches[st.batch_in_epoch: st.batch_in_epoch + size]
                yield group, st.batch_in_epoch + len(group) >= len(batches)
            self._end_epoch(bar, stop)

    def _limit_reached(self, deadline: float | None) -> bool:
        """``max_steps`` taken, or (agreed by every rank) the time limit passed; checked before each update."""
        cfg, st = self.cfg, self.state
        if cfg.max_steps is not None and st.step >= cfg.max_steps:
            return True
        if deadline is not None and self._agree(time.monotonic() > deadline):
            log.info("time limit of %s minutes reached at step %d", cfg.max_minutes, st.step)
            return True
        return False

    def _train_step(self, group: list, ends_epoch: bool, bar, stop: GracefulStop, total: int) -> None:
        """One update on ``group`` (a rank past its end stands in with weight 0), then what follows it:
        the train record every ``log_every`` steps, a mid-epoch validation every ``eval_every`` steps
        (the epoch's own validation follows an epoch's last step instead), else ``resume/`` every
        ``save_every`` steps, and the stop a signal asked for."""
        cfg, st, world = self.cfg, self.state, self.world
        mine = world.rank < len(group)
        figures = self.update(group[world.rank if mine else 0], 1.0 if mine else 0.0, stop.signum is not None)
        st.batch_in_epoch += len(group)
        st.step += 1
        bar.update(1)
        if figures is not None:
            for key, value in figures.items():
                st.window[key] = st.window.get(key, 0.0) + value
            self._timer_count += int(figures[self.task.unit])
        if st.step % cfg.log_every == 0 or st.step == total:
            rec = self._train_record()
            bar.set_postfix({"loss": f"{rec['loss']:.3f}", "ppl": f"{rec['ppl']:.2f}",
                             f"{self.task.unit_short}_s": f"{rec[self._speed_key]:.0f}"})
        if cfg.eval_every and st.step % cfg.eval_every == 0 and not ends_epoch:
            self._log_valid(bar)
        elif cfg.save_every and st.step % cfg.save_every == 0:
            self.save_resume()
        if self.stop_agreed if world.distributed else stop.signum is not None:
            self._stop(stop.signum)

    def _end_epoch(self, bar, stop: GracefulStop) -> None:
        """Count the epoch, validate (the learning-rate schedule follows), and stop if a rank was signalled."""
        st = self.state
        st.epoch += 1
        st.batch_in_epoch = 0
        self._log_valid(bar, epoch_end=True)
        if self._agree(stop.signum is not None):
            self._stop(stop.signum)

    def release(self) -> None:
        """Let go of the run directory's writer lock (``train`` does at its end)."""
        if self.lock is not None:
            self.lock.release()

    def _agree(self, flag: bool) -> bool:
        """``flag`` on any rank (the ranks must take the same branches)."""
        return distributed.any_rank(flag, self.device) if self.world.distributed else flag

    def _stop(self, signum: int | None) -> None:
        import signal

        self.save_resume()
        signum = signum or signal.SIGTERM  # another rank got the signal
        name = signal.Signals(signum).name
        raise TrainingStopped(f"stopped by {name} at step {self.state.step}; resume/ is saved: continue with "
                              f"`varattn train --resume {self.run_dir}`", signum)

    @property
    def _speed_key(self) -> str:
        """The train record's speed: ``tokens_per_s`` for NMT, ``questions_per_s`` for VQA."""
        return f"{self.task.unit}_per_s"

    def _train_record(self) -> dict:
        """Write the train record of the updates since the last one (the window), and start a new window."""
        st, window, unit = self.state, self.state.window, self.task.unit
        n = max(window.get(unit, 0.0), 1.0)
        nll = window.get("nll", 0.0)
        elapsed = max(time.perf_counter() - self._timer_start, 1e-9)
        rec = {"split": "train", "step": st.step, "epoch": st.epoch + 1, "loss": nll / n,
               "ppl": math.exp(min(nll / n, 700))}
        rec.update({k: v / n for k, v in window.items() if k not in ("nll", unit)})
        rec.update({self._speed_key: self._timer_count / elapsed, "lr": self.current_lr(st.step),
                    "skipped_steps": st.bad_steps})
        self.metrics.write(rec)
        st.window = dict.fromkeys(window, 0.0)
        self._timer_start, self._timer_count = time.perf_counter(), 0
        return rec

    # -- validation and checkpoints --------------------------------------------------------------
    def validate(self, epoch_end: bool = False) -> dict:
        """Score the validation set, write the record, best/, last/ and resume/; at an epoch's end
        (``epoch_end``: ``state.epoch`` just counted it) also follow the learning-rate schedule."""
        st = self.state
        saved = rng_state()  # validation may draw (sampling modes): keep training's stream untouched
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            sums = self.task.valid_sums(self.model, self.valid_batches[self.world.rank::self.world.size])
            if self.world.distributed:
                sums = distributed.sum_dicts(sums)
            result = self.task.valid_result(sums)
            heatmaps = self.task.heatmaps(self.model) if self.metrics.writer is not None else []
        self.model.train(was_training)
        set_rng_state(saved)
        self.summary = result.summary
        improved = result.metric < st.best_metric
        if epoch_end:
            self._schedule(result.metric)
        record = {"split": "valid", "step": st.step, "epoch": st.epoch + 1, "epoch_end": epoch_end,
                  "lr": self.current_lr(st.step),
                  "metric": result.metric, **result.figures}
        self.metrics.write(record)
        self.metrics.heatmaps(heatmaps, st.step)
        meta = {"step": st.step, "epoch": st.epoch + 1, "task": self.task.name, "valid": result.figures}
        if improved:
            st.best_metric = result.metric
            self._save_model("best", meta)
        self._save_model("last", meta)
        st.valid_step, st.last_valid = st.step, record
        self.save_resume()
        return record

    def current_lr(self, step: int) -> float:
        """The learning rate of update ``step``: the epoch-level rate, or the inverse-sqrt schedule's."""
        if self.cfg.lr_schedule == "inverse-sqrt":
            return inverse_sqrt_lr(self.state.lr, step, self.cfg.warmup_steps)
        return self.state.lr

    def _schedule(self, metric: float) -> None:
        """The paper's learning-rate rule after ``state.epoch`` completed epochs (see ``next_lr``); with the
        inverse-sqrt schedule only the best epoch-level metric is kept."""
        st, cfg = self.state, self.cfg
        if cfg.lr_schedule != "epoch-halving":
            st.epoch_best_metric = min(st.epoch_best_metric, metric)
            return
        st.lr = next_lr(st.lr, metric, st.epoch_best_metric, st.epoch, cfg.lr_decay, cfg.decay_start_epoch)
        set_lr(self.optimizer, st.lr)
        st.epoch_best_metric = min(st.epoch_best_metric, metric)

    def _log_valid(self, bar, epoch_end: bool = False) -> dict:
        record = self.validate(epoch_end)
        if self.world.main:
            bar.write(f"step {record['step']}: {self.summary}, lr {record['lr']:.2e}", file=sys.stderr)
        return record

    def _save_model(self, name: str, meta: dict) -> None:
        """Model weights only (no optimizer state) as an atomic checkpoint directory (rank 0)."""
        if self.world.main:
            save_checkpoint(self.run_dir / name, {k: v.detach() for k, v in self.model.state_dict().items()}, meta)

    def save_resume(self) -> None:
        """Write ``resume/`` (rank 0), with every rank's RNG state (a collective when data-parallel)."""
        rngs = distributed.gather(rng_state()) if self.world.distributed else [rng_state()]
        if self.world.main:
            self.state.metrics_bytes = self.metrics.size()
            save_resume(self.run_dir / RESUME_DIR, self.model, self.optimizer, self.state, rngs)


# -- the two ways in ---------------------------------------------------------------------------------


def _prepare_device(cfg: TrainingConfig) -> tuple[World, torch.device]:
    """This process's place (torchrun's environment) and device; joins the process group when there are several."""
    world = distributed.world_from_env()
    device = distributed.device_for(world, resolve_device(cfg.device))  # a missing GPU fails here, before writing
    check_precision(device, cfg.precision)  # so does bf16 where the device has no bf16 kernels
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    distributed.init(world, device, cfg.dist_timeout_s)
    return world, device


def _log_device(world: World, device: torch.device) -> None:
    threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
    log.info("device: %s%s%s", device, threads, f" x {world.size} processes" if world.distributed else "")


def start(task: Task, cfg: TrainingConfig, run_dir: str | Path, progress: bool | None = None,
          tensorboard: bool = True) -> Trainer:
    """A fresh run of ``task`` in ``run_dir`` (created; it must not hold a run yet).

    Rank 0 takes the run directory's writer lock (:mod:`varattn.training.rundir_lock`) before it writes
    anything and keeps it until :meth:`Trainer.train` ends. Data-parallel: rank 0 prepares the data and
    writes the run files; the other ranks then read them back (``task.load``), as a resumed run would.
    """
    run_dir = Path(run_dir)
    world, device = _prepare_device(cfg)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    lock = None
    if world.main:
        try:
            model, lock = rundir.create(task, cfg, run_dir)
            model = model.to(device)  # before the optimizer, whose state follows
        except BaseException as exc:
            if lock is not None:
                lock.release()
            if world.distributed:
                distributed.broadcast(str(exc) or type(exc).__name__)  # the other ranks stop too
            raise
        if world.distributed:
            distributed.broadcast(None)
    else:
        failed = distributed.broadcast(None)
        if failed is not None:
            raise VarattnError(f"rank 0 failed to start the run: {failed}")
        task.load(run_dir, read_run_info(run_dir))
        model = task.build_model().to(device)
    try:
        optimizer = make_optimizer(model, cfg.lr)
        state = TrainerState(lr=cfg.lr, data_sha256=task.fingerprint())
        trainer = Trainer(task, cfg, run_dir, model, optimizer, state, device,
                          MetricsLog(run_dir, tensorboard, enabled=world.main), progress, world, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if world.distributed:  # from here on every rank draws its own random numbers (sampling, dropout)
        torch.manual_seed(distributed.rank_seed(cfg.seed, world.rank, 0))
    _log_device(world, device)
    return trainer


def resume(task: Task, cfg: TrainingConfig, run_dir: str | Path, progress: bool | None = None,
           tensorboard: bool = True) -> Trainer:
    """Continue ``run_dir`` from its ``resume/`` checkpoint, on as many processes as now run.

    Only the keys in ``cfg.RESUMABLE_KEYS`` may differ from the run's ``run.json`` (which is then
    updated, so later resumes keep the new ``max_steps`` or ``epochs``). With as many processes as
    saved the run, every rank gets its random stream back (bit-identical continuation); with another
    number, each rank starts a fresh stream seeded from the seed, its rank and the step. Rank 0 takes
    the run directory's writer lock first, before it reads or writes anything there.
    """
    run_dir = Path(run_dir)
    world, device = _prepare_device(cfg)
    lock = rundir.lock_existing(run_dir, take=world.main)
    try:
        return _resume_locked(task, cfg, run_dir, progress, tensorboard, world, device, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _resume_locked(task: Task, cfg: TrainingConfig, run_dir: Path, progress: bool | None, tensorboard: bool,
                   world: World, device: torch.device, lock: RunDirLock | None) -> Trainer:
    info, changed = rundir.check_resumable(run_dir, cfg, task)
    point = read_resume(run_dir / RESUME_DIR)
    st = point.state
    rundir.check_unfinished(run_dir, cfg, st)
    torch.manual_seed(cfg.seed)
    task.load(run_dir, info)
    rundir.check_same_data(run_dir, st, task)
    st.count_window_in(task.unit)
    model = task.build_model().to(device)
    optimizer = make_optimizer(model, cfg.lr)
    point.apply(run_dir / RESUME_DIR, model, optimizer)
    set_lr(optimizer, st.lr)  # the counter is what the schedule follows
    if world.main:
        cut_metrics(run_dir, st.metrics_bytes)
        if changed:
            rundir.save_config(run_dir, info, cfg)
    metrics = MetricsLog(run_dir, tensorboard, purge_step=st.step + 1, enabled=world.main)
    trainer = Trainer(task, cfg, run_dir, model, optimizer, st, device, metrics, progress, world, lock)
    saved = len(point.rng_states)
    if saved == world.size:
        point.restore_rng(run_dir / RESUME_DIR, world.rank)
    else:
        log.info("%s was saved by %d process(es), resumed on %d: every rank starts a fresh random stream",
                 run_dir, saved, world.size)
        torch.manual_seed(distributed.rank_seed(cfg.seed, world.rank, st.step))
    log.info("resuming at step %d (epoch %d, batch %d)", st.step, st.epoch + 1, st.batch_in_epoch)
    _log_device(world, device)
    return trainer


__all__ = ["METRICS_FILE", "RUN_FILE", "Trainer", "resume", "start"]
