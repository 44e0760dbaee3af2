"""How many importance samples the relaxed model's perplexity needs (issue 14, part 2).

    python experiments/relaxed_estimator.py RUN_DIR --prefix DATA/val --sentences 200 \
        --samples 10 20 40 80 160 320 640 --seeds 1 2 3 --out experiments/results/relaxed_estimator.json

For each sample count N and seed, ``varattn.nmt.evaluate.evaluate`` of the run's best checkpoint on the
first ``--sentences`` pairs gives the importance-sampled perplexity exp(-(1/T) sum_t log (1/N sum_n w_n)),
w_n = p(z_n) f(x, z_n) / q(z_n), z_n ~ q. Each log-estimate is a stochastic lower bound on log p(y_t):
its expectation lies below the truth and rises towards it as N grows, so the perplexity falls with N.
The script prints, per N, the perplexity over seeds (mean, min, max) and the relative change of the mean
when N doubles; the smallest N whose doubling changes it by less than 1 % is the recommended default.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--prefix", required=True, help="evaluation corpus prefix (PREFIX.de, PREFIX.en)")
    p.add_argument("--src-lang", default="de")
    p.add_argument("--tgt-lang", default="en")
    p.add_argument("--sentences", type=int, default=200)
    p.add_argument("--samples", type=int, nargs="+", default=[10, 20, 40, 80, 160, 320, 640])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    import torch

    from varattn.nmt.batching import collate
    from varattn.nmt.corpora.corpus import read_lines
    from varattn.nmt.evaluate import evaluate
    from varattn.nmt.run import load_run

    torch.set_num_threads(args.threads)
    trained = load_run(args.run_dir, "best", "cpu")
    if trained.objective.importance_samples is None:
        p.error(f"{args.run_dir} is scored exactly ({trained.mode}); nothing to measure")
    src = read_lines(f"{args.prefix}.{args.src_lang}")[: args.sentences]
    tgt = read_lines(f"{args.prefix}.{args.tgt_lang}")[: args.sentences]
    pairs = [(trained.encode_src(s), trained.encode_tgt(t)) for s, t in zip(src, tgt)]
    pairs = [x for x in pairs if x[0]]
    batches = [collate([a for a, _ in pairs[i : i + args.batch_size]], [b for _, b in pairs[i : i + args.batch_size]],
                       trained.tgt_vocab, list(range(i, min(i + args.batch_size, len(pairs)))))
               for i in range(0, len(pairs), args.batch_size)]
    rows = []
    for n in args.samples:
        trained.objective.set_eval_samples(n)
        ppls, start = [], time.monotonic()
        for seed in args.seeds:
            torch.manual_seed(seed)
            ppls.append(evaluate(trained.model, trained.objective, batches, accuracy=False)["ppl"])
        rows.append({"samples": n, "ppl": ppls, "mean": statistics.fmean(ppls), "min": min(ppls), "max": max(ppls),
                     "seconds": round(time.monotonic() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)
    for a, b in zip(rows, rows[1:]):
        b["change_from_half"] = (b["mean"] - a["mean"]) / a["mean"]
    first_stable = next((a["samples"] for a, b in zip(rows, rows[1:])
                         if b["samples"] == 2 * a["samples"] and abs(b["change_from_half"]) < 0.01), None)
    result = {"run": str(args.run_dir), "mode": trained.mode, "prefix": args.prefix, "sentences": len(pairs),
              "tokens": sum(len(b) + 1 for _, b in pairs), "seeds": args.seeds, "rows": rows,
              "smallest_n_whose_doubling_changes_ppl_by_under_1pct": first_stable}
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
