"""The easy-VQA comparison to convergence (issue 19, item 4): every mode, three seeds, on a CPU.

    python experiments/vqa_study.py                                   # train + evaluate what is missing
    python experiments/vqa_study.py --modes soft:1 var-enum           # a subset, in this order
    python experiments/vqa_study.py --max-epochs 2 --set data.limit_train=160 ...   # smoke runs

Per job (a mode and a seed; every mode of ``varattn.latent.mode_names()`` with seeds 1, 2 and 3, first
seeds first):

1. Training with ``varattn vqa train`` and the shipped ``easy`` config (only ``--mode`` and ``--seed``
   differ), one epoch per process: the first process is fresh (``--epochs 1``), each later one
   ``--resume RUN --epochs k``. The trainer validates at every epoch's end and decides its
   learning-rate schedule there, so one process per epoch gives one validation per epoch and the
   wall clock (and CPU time) of every epoch, recorded in ``RUN/study_epochs.jsonl``. Training stops
   when the validation metric (the trainer's: -ELBO with an inference network, the exact NLL
   otherwise) has not improved for ``--patience`` epochs, or at ``--max-epochs``; ``best/`` holds the
   best validation's weights.
2. ``varattn vqa evaluate RUN --json`` on the test split (accuracy, exact NLL, -ELBO, prior, q and exact
   posterior entropies), then ``RESULTS/MODE-sSEED.json``, written atomically: small, meant to be
   committed. ``experiments/report_vqa.py`` turns these files into a section of docs/results.md.

Every training and evaluation process is ``python -m varattn.cli`` started from this checkout, on
``--threads`` threads. Resumable: a job whose JSON exists is skipped; a job interrupted in training
continues from its run directory's ``resume/`` checkpoint (the epochs already validated are read from
its ``metrics.jsonl``); an interrupted evaluation is redone. One failing job does not stop the others.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the NMT study's subprocess environment, log line and JSON-lines reader
from multi30k import child_env, log, read_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "vqa"
SEEDS = (1, 2, 3)
EPOCHS_FILE = "study_epochs.jsonl"

sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))
from machine import cpu_name  # noqa: E402  benchmarks/machine.py: one reader of the CPU name

from varattn.latent import mode_names  # noqa: E402


@dataclass(frozen=True)
class Study:
    """How each job trains: the config, its overrides, the cap and the patience, in epochs."""

    config: str = "easy"
    sets: tuple[str, ...] = ()
    max_epochs: int = 30
    patience: int = 2
    threads: int = 1
    results: Path = RESULTS
    work: Path = field(default_factory=lambda: Path("runs/vqa-study").resolve())

    def run_dir(self, mode: str, seed: int) -> Path:
        return self.work / "runs" / job_name(mode, seed)


def job_name(mode: str, seed: int) -> str:
    """Run directory and result file name of ``mode`` trained with ``seed``."""
    return f"{mode}-s{seed}"


# -- processes -------------------------------------------------------------------------------------


def run(cmd: list[str], threads: int) -> tuple[str, float, float]:
    """Run ``cmd`` with this checkout's package: (stdout, wall seconds, CPU seconds); raise on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(cmd, env=child_env(threads), capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout, wall, cpu


def varattn(*args: str) -> list[str]:
    return [sys.executable, "-m", "varattn.cli", "vqa", *args]


# -- training --------------------------------------------------------------------------------------
def curve(run_dir: Path) -> list[dict]:
    """One point per validated epoch (the trainer's epoch-end validations, in order), with the wall clock
    and CPU time of the process that finished it (after a crash: only that of the resumed process; None
    where the process ended before the driver could record it)."""
    valid = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("split") == "valid" and r.get("epoch_end")]
    timing = {r["epoch"]: r for r in read_jsonl(run_dir / EPOCHS_FILE)}
    points = []
    for k, rec in enumerate(valid, start=1):
        t = timing.get(k, {})
        points.append({"epoch": k, "step": rec["step"], "metric": rec["metric"], "accuracy": rec.get("accuracy"),
                       "nll": rec.get("nll"), "elbo_nll": rec.get("elbo_nll"),
                       "prior_entropy": rec.get("prior_entropy"), "posterior_entropy": rec.get("posterior_entropy"),
                       "exact_posterior_entropy": rec.get("exact_posterior_entropy"), "lr": rec.get("lr"),
                       "wall_s": t.get("wall_s"), "cpu_s": t.get("cpu_s")})
    return points


def best_point(points: list[dict]) -> dict:
    """The first epoch with the lowest validation metric (the trainer's ``best/``)."""
    return min(points, key=lambda p: (p["metric"], p["epoch"]))


def stop_reason(points: list[dict], study: Study) -> str | None:
    """Why a job's training is over (None: it goes on): no improvement for ``patience`` epochs, or the cap."""
    if points and len(points) - best_point(points)["epoch"] >= study.patience:
        return f"early stop: no improvement in {study.patience} epochs"
    if len(points) >= study.max_epochs:
        return f"cap: {study.max_epochs} epochs"
    return None


def train_job(mode: str, seed: int, study: Study) -> Path:
    """Train ``mode`` with ``seed`` one epoch per process until :func:`stop_reason` says it is done."""
    run_dir = study.run_dir(mode, seed)
    while True:
        points = curve(run_dir)
        reason = stop_reason(points, study)
        if reason:
            log(f"{run_dir.name}: training done after {len(points)} epochs ({reason})")
            return run_dir
        target = len(points) + 1
        common = ["--epochs", str(target), "--threads", str(study.threads), "--device", "cpu", "--no-progress",
                  "--no-tensorboard"]
        if (run_dir / "run.json").exists() and ((run_dir / "resume").exists() or (run_dir / "resume.bak").exists()):
            cmd = varattn("train", "--resume", str(run_dir), *common)
        else:
            if run_dir.exists():  # started but never saved: start again
                shutil.rmtree(run_dir)
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            sets = [arg for s in study.sets for arg in ("--set", s)]
            cmd = varattn("train", "--config", study.config, "--mode", mode, "--seed", str(seed), "--out",
                          str(run_dir), *sets, *common)
        out, wall, cpu = run(cmd, study.threads)
        with open(run_dir / EPOCHS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"epoch": target, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}) + "\n")
        last = out.strip().splitlines()[-1] if out.strip() else ""
        log(f"{run_dir.name}: epoch {target}: {last} ({wall:.0f} s, {cpu:.0f} s CPU)")


# -- evaluation and the result ---------------------------------------------------------------------
def evaluate_job(run_dir: Path, threads: int) -> tuple[dict, float]:
    """The test figures of ``run_dir``'s best checkpoint (``varattn vqa evaluate --json``) and their wall time."""
    out, wall, _ = run(varattn("evaluate", str(run_dir), "--json", "--device", "cpu", "--checkpoint", "best"),
                       threads)
    return json.loads(out.strip().splitlines()[-1]), wall


def finish_job(mode: str, seed: int, study: Study) -> Path:
    run_dir = study.run_dir(mode, seed)
    test, eval_s = evaluate_job(run_dir, study.threads)
    points = curve(run_dir)
    best = best_point(points)
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    timed = [p for p in points if p["wall_s"] is not None]
    result = {
        "mode": mode,
        "seed": seed,
        "study": {"config": study.config, "sets": list(study.sets), "max_epochs": study.max_epochs,
                  "patience": study.patience, "threads": study.threads},
        "stopped": stop_reason(points, study),
        "epochs": len(points),
        "best": {k: best[k] for k in ("epoch", "step", "metric", "accuracy", "nll", "elbo_nll")},
        "train_wall_s": round(sum(p["wall_s"] for p in timed), 1),
        "train_cpu_s": round(sum(p["cpu_s"] for p in timed), 1),
        "untimed_epochs": len(points) - len(timed),
        "test": test,
        "evaluate_s": round(eval_s, 1),
        "curve": points,
        "config": info.get("config"),
        "model": info.get("model"),
        **provenance(study.threads),
    }
    return write_result(study.results, job_name(mode, seed), result)


def provenance(threads: int) -> dict:
    """Where a result came from: the machine, the checkout's commit, the time it was written."""
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return {"machine": {"threads": threads, "cpu": cpu_name(), "cores": os.cpu_count(),
                        "python": platform.python_version(), "load_average": list(os.getloadavg())},
            "commit": proc.stdout.strip(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_result(results_dir: Path, name: str, result: dict) -> Path:
    """``results_dir/NAME.json``, written atomically."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# -- jobs ------------------------------------------------------------------------------------------
def parse_jobs(specs: list[str], seeds: tuple[int, ...] = SEEDS) -> list[tuple[str, int]]:
    """``MODE`` (every seed) or ``MODE:SEED``, in the order given; a bad one: SystemExit."""
    modes = mode_names()
    jobs = []
    for spec in specs:
        mode, _, seed = spec.partition(":")
        if mode not in modes:
            raise SystemExit(f"unknown mode {mode!r} in --modes (choose from {', '.join(modes)})")
        if seed and not seed.isdigit():
            raise SystemExit(f"bad seed in --modes {spec!r}: MODE or MODE:SEED, e.g. soft:2")
        jobs += [(mode, int(seed))] if seed else [(mode, s) for s in seeds]
    return jobs


def default_jobs(seeds: tuple[int, ...] = SEEDS) -> list[tuple[str, int]]:
    """Every mode's first seed, then every mode's second, and so on: a cut-short study covers all modes."""
    return [(mode, seed) for seed in seeds for mode in mode_names()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/vqa-study"), help="run directories (default runs/vqa-study)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where MODE-sSEED.json go (default "
                   "experiments/results/vqa)")
    p.add_argument("--modes", nargs="+", help="MODE (seeds 1 2 3) or MODE:SEED, in this order (default: all)")
    p.add_argument("--max-epochs", type=int, default=30, help="the cap in epochs (default 30)")
    p.add_argument("--patience", type=int, default=2, help="epochs without improvement that stop a job (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of every process (default 1)")
    p.add_argument("--config", default="easy", help="the vqa config every job trains (default: the shipped easy)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every job (smoke tests); recorded in the results")
    args = p.parse_args(argv)
    if args.max_epochs < 1 or args.patience < 1 or args.threads < 1:
        p.error("--max-epochs, --patience and --threads must be at least 1")
    study = Study(args.config, tuple(args.set), args.max_epochs, args.patience, args.threads,
                  args.results.resolve(), args.work.resolve())
    jobs = parse_jobs(args.modes) if args.modes else default_jobs()
    failed = 0
    for mode, seed in jobs:
        name = job_name(mode, seed)
        if (study.results / f"{name}.json").exists():
            log(f"{name}: results exist, skipped")
            continue
        t0 = time.monotonic()
        try:
            train_job(mode, seed, study)
            path = finish_job(mode, seed, study)
        except RuntimeError as exc:  # one failing job must not stop the others
            log(f"{name}: FAILED, going on with the next job\n{exc}")
            failed += 1
            continue
        log(f"{name}: wrote {path} ({(time.monotonic() - t0) / 60:.1f} min)")
    if failed:
        log(f"{failed} of {len(jobs)} jobs failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
