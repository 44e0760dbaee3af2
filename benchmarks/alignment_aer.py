"""Alignment error rate of the prior, the inference network and the exact posterior.

Trains one small model per mode on the built-in synthetic task (the ``toy`` config), then
aligns the synthetic validation split with each method (``TrainedModel.align``: each target
word links to its most probable source word) and scores the links against the task's gold
alignments (every gold link is sure). Prints a markdown table: AER of the prior
p(z|x,y<t), the inference network q(z|x,y) (where the model has one) and the exact posterior
p(z|x,y<=t), with the validation perplexity and training time.

    python benchmarks/alignment_aer.py [--modes soft marginal var-enum var-sample] [--epochs 5]
        [--out DIR] [--threads 1] [--seed 1] [--config toy] [--set KEY=VALUE ...]

``--config transformer-small`` measures the Transformer (docs/transformer.md) on the same task.

The synthetic words are whole words (piece style ``none``), so pieces are words.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import torch

from varattn.nmt.align import alignment_error_rate
from varattn.nmt.config import load_config
from varattn.nmt.data import synthetic_pairs
from varattn.nmt.posterior import has_posterior
from varattn.nmt.run import load_run
from varattn.nmt.train import train

DEFAULT_MODES = ["soft", "marginal", "var-enum", "var-sample"]


def measure(mode: str, out: Path, epochs: int | None, seed: int, threads: int, config: str = "toy",
            sets: list[str] | None = None) -> dict:
    overrides = {"mode": mode, "epochs": epochs, "seed": seed, "threads": threads}
    cfg = load_config(config, overrides, sets or [])
    start = time.perf_counter()
    result = train(cfg, out / mode, progress=False, tensorboard=False)
    seconds = time.perf_counter() - start
    trained = load_run(out / mode)
    valid = synthetic_pairs(trained.config)["valid"]
    src = [" ".join(s) for s in valid.src]
    tgt = [" ".join(t) for t in valid.tgt]
    golds = [(set(links), set(links)) for links in valid.links]
    row = {"mode": mode, "ppl": result["ppl"], "seconds": seconds, "sentences": len(src)}
    methods = ["prior", "posterior", "exact"] if has_posterior(trained) else ["prior", "exact"]
    for method in methods:
        aligned = trained.align(src, tgt, method=method)
        row[method] = alignment_error_rate([a["links"] for a in aligned], golds)["aer"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=DEFAULT_MODES)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the toy config's)")
    parser.add_argument("--out", help="directory for the runs (default: a temporary directory)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these tiny models)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--config", default="toy", help="the shipped config (or YAML file) every mode trains with")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        rows = [measure(mode, out, args.epochs, args.seed, args.threads, args.config, args.set)
                for mode in args.modes]
    cfg = load_config(args.config, {"epochs": args.epochs}, args.set)
    threads = f"{args.threads} thread{'s' if args.threads != 1 else ''}"
    sets = f" ({', '.join(args.set)})" if args.set else ""
    print(f"Synthetic task, valid split ({rows[0]['sentences']} pairs), {args.config} config{sets}, "
          f"{cfg.epochs} epochs, "
          f"seed {args.seed}, {threads}; {datetime.date.today().isoformat()}. "
          "AER (lower is better) of argmax links, one per target word.")
    print()
    print("| mode | prior p(z\\|x,y<t) | posterior q(z\\|x,y) | exact p(z\\|x,y<=t) | valid PPL | train time |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        post = f"{r['posterior']:.3f}" if "posterior" in r else "–"
        print(f"| {r['mode']} | {r['prior']:.3f} | {post} | {r['exact']:.3f} | {r['ppl']:.3f} | "
              f"{r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
