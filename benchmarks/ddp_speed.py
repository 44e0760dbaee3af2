"""Training tokens/s of one process against N data-parallel gloo processes on this machine (threads split).

Runs ``varattn train`` on the synthetic task with the ``small`` config's model: as one process with
``--threads T``, as one process with ``T / N`` threads, and under ``torchrun --nproc_per_node N``
with ``T / N`` threads per process (``parallel_efficiency``: N processes against N times one process
on its share of the threads; below 1 by the all-reduce and the work the processes share).
The figure is the median ``tokens_per_s`` of the train records in metrics.jsonl after the first
(global tokens -- all ranks -- per second of rank 0's wall clock), so start-up and validation are not
counted. Prints one JSON object.

    PYTHONPATH=src python benchmarks/ddp_speed.py --threads 2 --procs 2 --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SETS = ["log_every=10", "save_every=0", "max_valid_sentences=50"]


def run(out: Path, mode: str, steps: int, threads: int, procs: int) -> dict:
    args = ["train", "--config", "small", "--mode", mode, "--max-steps", str(steps), "--threads", str(threads),
            "--no-progress", "--no-tensorboard", "--out", str(out), *[f"--set={s}" for s in SETS]]
    if procs == 1:
        cmd = [sys.executable, "-m", "varattn", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               "-m", "varattn", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if r["split"] == "train"][1:]
    return {"procs": procs, "threads_per_proc": threads, "tokens_per_s": statistics.median(speeds),
            "window_tokens_per_s": [round(s) for s in speeds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="threads in all")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--modes", default="soft,var-enum")
    args = parser.parse_args()
    report = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                          "load_average": os.getloadavg()}, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            share = max(1, args.threads // args.procs)
            one = run(Path(tmp) / f"{mode}-1", mode, args.steps, args.threads, 1)
            one_share = run(Path(tmp) / f"{mode}-1s", mode, args.steps, share, 1) if share != args.threads else one
            many = run(Path(tmp) / f"{mode}-{args.procs}", mode, args.steps, share, args.procs)
            report["results"].append({
                "mode": mode, "one": one, "one_with_a_share_of_threads": one_share, "many": many,
                "speedup": many["tokens_per_s"] / one["tokens_per_s"],
                # perfect scaling would be procs x one process on its share of the threads
                "parallel_efficiency": many["tokens_per_s"] / (args.procs * one_share["tokens_per_s"])})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
