"""What happens to the relaxed model when q comes in after the warm-up, before and after issue 19's fix.

    python experiments/relaxed_arrival.py --task toy                                  # about 2 minutes
    python experiments/relaxed_arrival.py --task multi30k --data data/multi30k        # about 20 minutes
    python experiments/relaxed_arrival.py --report                                    # the JSON as a table

Two parameterisations of ``var-relaxed``, everything else the task's own configuration and seed:

``before``
    ``concentration: exp`` and q from the inference network alone (``posterior_residual: false``):
    one score sets the Dirichlet's mean and its precision, ``alpha = exp(clamp(s, -10, 10))``.
``after``
    the default since issue 19: ``alpha = kappa * softmax(s)`` with the precision ``kappa`` from its own
    bounded head, and q's scores as offsets from the prior's (q starts at the prior).

Each run trains to ``warmup_steps + WINDOW // 2`` updates with a train record every ``LOG_EVERY``
updates and keeps the records of the ``WINDOW`` updates around q's arrival: KL per token, the prior's
and q's precision (total concentration) and the entropy of the prior's and q's means. The toy task is
the built-in synthetic one (``varattn train`` defaults); Multi30k is the study's data and configuration
(``experiments/multi30k.yaml``, its BPE segmentation).
Results: ``experiments/results/relaxed-arrival/TASK-VARIANT.json``
(written into the repository only with ``--results``; by default under ``--work``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "relaxed-arrival"
WINDOW = 200  # updates around q's arrival
LOG_EVERY = 10
VARIANTS = {
    "before": ["objective.concentration=exp", "objective.posterior_residual=false"],
    "after": [],
}
FIGURES = ["loss", "kl", "prior_precision", "posterior_precision", "prior_entropy", "posterior_entropy"]


def warmup_steps(task: str) -> int:
    """The warm-up of ``var-relaxed`` in the task's configuration file."""
    import yaml

    path = ROOT / ("src/varattn/configs/toy.yaml" if task == "toy" else "experiments/multi30k.yaml")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    return int(config["objective"]["var-relaxed"]["warmup_steps"])


def train_command(task: str, variant: str, run_dir: Path, steps: int, data_dir: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "varattn.cli", "train", "--mode", "var-relaxed", "--out", str(run_dir),
           "--max-steps", str(steps), "--threads", "1", "--no-progress", "--no-tensorboard",
           "--set", f"log_every={LOG_EVERY}"]
    if task == "multi30k":
        cmd += ["--config", str(ROOT / "experiments" / "multi30k.yaml"), "--train", str(data_dir / "train"),
                "--valid", str(data_dir / "val"), "--src-lang", "de", "--tgt-lang", "en"]
    for setting in VARIANTS[variant]:
        cmd += ["--set", setting]
    return cmd


def window(run_dir: Path, warmup: int) -> list[dict]:
    """The train records of the ``WINDOW`` updates around q's arrival (step ``warmup``)."""
    lo, hi = warmup - WINDOW // 2, warmup + WINDOW // 2
    out = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("split") == "train" and lo < record["step"] <= hi:
            out.append({"step": record["step"], **{k: record.get(k) for k in FIGURES}})
    return out


def run_variant(task: str, variant: str, work: Path, data_dir: Path | None, results: Path) -> Path:
    warmup = warmup_steps(task)
    run_dir = work / f"{task}-{variant}"
    if not (run_dir / "run.json").exists():
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
        subprocess.run(train_command(task, variant, run_dir, warmup + WINDOW // 2, data_dir), env=env, check=True)
    records = window(run_dir, warmup)
    valid = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    result = {"task": task, "variant": variant, "settings": VARIANTS[variant], "warmup_steps": warmup,
              "log_every": LOG_EVERY, "window": records,
              "valid": [r for r in valid if r.get("split") == "valid"]}
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{task}-{variant}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}", flush=True)
    return path


def summary_rows(results: Path) -> list[str]:
    """The markdown table of docs/results.md for the JSON files in ``results``."""
    sys.path.insert(0, str(ROOT / "experiments"))
    from report_multi30k import arrival_rows

    return arrival_rows([json.loads(p.read_text(encoding="utf-8")) for p in sorted(results.glob("*.json"))])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["toy", "multi30k"], default="toy")
    p.add_argument("--data", type=Path, default=Path("data/multi30k"), help="Multi30k directory (with task1/tok)")
    p.add_argument("--work", type=Path, default=Path("runs/relaxed-arrival"))
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["before", "after"])
    p.add_argument("--results", type=Path, help=f"where the JSON goes (the record: {RESULTS.relative_to(ROOT)})")
    p.add_argument("--report", action="store_true", help="print the table of the JSON files in --results")
    args = p.parse_args(argv)
    results = (args.results or args.work / "results").resolve()
    if args.report:
        print("\n".join(summary_rows(results)))
        return 0
    data_dir = None
    if args.task == "multi30k":
        sys.path.insert(0, str(ROOT / "experiments"))
        from multi30k import prepare_data  # the study's BPE segmentation

        data_dir = prepare_data(args.data.resolve(), args.work.resolve())
    for variant in args.variants:
        run_variant(args.task, variant, args.work.resolve(), data_dir, results)
    print("\n".join(summary_rows(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
