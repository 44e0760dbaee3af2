"""Decoding speed: sentences per second for greedy search, beam 5 and beam 10.

Trains the shipped ``small`` config for a few hundred updates on the IWSLT'14 *valid* split
(the train split is not shipped), or takes an existing run with ``--run``, then translates the
first ``--lines`` lines of ``test.de.bpe`` with each search setting and prints a markdown table
with the machine it ran on. The exact-marginal rule costs one output layer per source position
and token, so a ``--topk`` (K-max) row is added for comparison.

    python benchmarks/translate_speed.py [--run RUN_DIR] [--data DIR] [--steps 100] [--lines 500]

The data directory is ``--data``, else ``$VARATTN_DATA``, else ``data/iwslt14`` relative to the
repository root (where ``varattn prepare iwslt14 URL_OR_ARCHIVE data/iwslt14`` writes it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_name  # benchmarks/machine.py, beside this script

import varattn
from varattn.nmt.bleu import quiet_bleu
from varattn.nmt.corpora.corpus import read_lines

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO / "data" / "iwslt14"
#: keeps the default run within minutes on two cores: the exact marginal costs S x V per token
FAST_SETS = ["max_vocab=2000", "max_len=30", "max_valid_sentences=100"]


def train_small(data: Path, run_dir: Path, mode: str, steps: int, sets: list[str]) -> float:
    from varattn.nmt.config import load_config
    from varattn.nmt.train import train

    overrides = {"mode": mode, "train": str(data / "valid"), "valid": str(data / "valid"), "src_lang": "de.bpe",
                 "tgt_lang": "en.bpe", "max_steps": steps, "eval_every": steps}
    cfg = load_config("small", overrides, [*FAST_SETS, *sets])
    start = time.perf_counter()
    train(cfg, run_dir, progress=False, tensorboard=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="an existing run directory (skips training)")
    parser.add_argument("--data", default=os.environ.get("VARATTN_DATA", str(DEFAULT_DATA)),
                        help="directory with valid.{de,en}.bpe and test.{de,en}.bpe")
    parser.add_argument("--mode", default="var-enum", help="training mode when training (default var-enum)")
    parser.add_argument("--steps", type=int, default=100, help="training updates when training (default 100)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides when training (after the defaults " + " ".join(FAST_SETS) + ")")
    parser.add_argument("--keep", help="train into this directory and keep it (default: a temporary one)")
    parser.add_argument("--lines", type=int, default=500, help="first N lines of test.de.bpe")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--beams", default="1,5,10", help="comma-separated beam sizes (1 = greedy)")
    parser.add_argument("--topk", type=int, default=5, help="also time beam 5 with K-max K (0: skip)")
    parser.add_argument("--alpha", type=float, default=1.0, help="length penalty (default 1.0)")
    parser.add_argument("--eos-norm", type=float, default=3.0,
                        help="EOS normalisation (default 3, the authors' setting: keeps a barely trained model's "
                             "outputs near the source length)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    test_src, test_ref = data / "test.de.bpe", data / "test.en.bpe"
    if not test_src.is_file():
        raise SystemExit(f"no {test_src}: run `varattn prepare iwslt14 URL_OR_ARCHIVE data/iwslt14`, pass --data "
                         "or set VARATTN_DATA")

    tmp = None
    train_s = None
    if args.run:
        run_dir = Path(args.run)
    else:
        if args.keep:
            run_dir = Path(args.keep)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="varattn-speed-")
            run_dir = Path(tmp.name) / "run"
        print(f"training {args.mode} ({args.steps} updates, small config) on {data / 'valid'} ...", flush=True)
        train_s = train_small(data, run_dir, args.mode, args.steps, args.set)
    trained = varattn.load(run_dir)
    src = read_lines(test_src)[: args.lines]
    ref = read_lines(test_ref)[: args.lines]
    cfg = trained.model.cfg
    src_tokens = sum(len(line.split()) for line in src)

    settings = [(int(b), 0) for b in args.beams.split(",")]  # 0: every position (the full marginal)
    if args.topk:
        settings.append((5, args.topk))
    trained.translate(src[:8], beam=max(b for b, _ in settings))  # warm-up: first-call allocations, kernels
    rows = []
    for beam, topk in settings:
        start = time.perf_counter()
        out = trained.translate(src, beam=beam, topk=topk, alpha=args.alpha, eos_norm=args.eos_norm,
                                batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        out_tokens = sum(len(t.tokens) + 1 for t in out)
        bleu = quiet_bleu([t.text for t in out], ref)["tok_bleu"]
        name = "greedy" if beam == 1 else f"beam {beam}"
        rows.append((name + (f", K-max {topk}" if topk else ""), seconds, len(src) / seconds, out_tokens / seconds,
                     out_tokens / len(src) - 1, bleu))
        print(f"  {rows[-1][0]}: {seconds:.1f} s", flush=True)

    print()
    print(f"model: {trained.mode}, {run_dir}, step {trained.meta.get('step', '?')}"
          + (f" (trained here in {train_s:.0f} s)" if train_s is not None else "")
          + f"; {cfg.type}: " + ", ".join(f"{k} {v}" for k, v in cfg.to_dict().items() if k != "type"))
    print(f"input: first {len(src)} lines of {test_src.name} ({src_tokens} source tokens), batch {args.batch_size}, "
          f"length penalty alpha {args.alpha}, eos_norm {args.eos_norm}, max length 2*src+10")
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads; {datetime.date.today().isoformat()}")
    print()
    print("| search | seconds | sentences/s | tokens/s (with </s>) | mean output length | BLEU (tok.) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, seconds, sps, tps, length, bleu in rows:
        print(f"| {name} | {seconds:.1f} | {sps:.2f} | {tps:.1f} | {length:.1f} | {bleu:.2f} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
