"""K-max decoding of the enumerating modes (issue 23, item 3): sentences per second and BLEU at K = 1, 2, 5, 10
and the full marginal, beside soft attention, and the smallest K that keeps BLEU within 0.1 of the full marginal.

    python benchmarks/kmax_decoding.py RUN [RUN ...] [--soft RUN] [--work runs/multi30k-converged]
                                       [--data data/multi30k] [--split test_2016_flickr]
                                       [--src FILE --ref FILE] [--ks 1,2,5,10] [--beam 5] [--lines N]
                                       [--batch-size 32] [--threads N] [--device cpu] [--tolerance 0.1]
                                       [--json] [--out FILE.json] [--markdown PATH]

Each ``RUN`` is a trained run directory of a mode whose predictive rule is the exact marginal (``marginal``,
``var-enum``, ``hard-enum``, ...). Its best checkpoint translates the test source once per K (``translate
--topk K``: the K best prior positions at each step, renormalised, as the paper's K-max evaluation does) and
once with the full marginal (no K), with the search of ``varattn translate`` (beam ``--beam``, its default
length penalty and lengths); each decoding is timed alone, after a warm-up on the first 8 lines, and its
output scored with the tokenised BLEU of ``varattn bleu`` against the reference. ``--soft RUN`` adds a
soft-attention run decoded the same way (one output layer per token) for comparison.

The test data defaults to the Multi30k study's layout (``experiments/multi30k.py``): the source is
``WORK/data/SPLIT.de`` (the study's joint BPE), the reference ``DATA/task1/tok/SPLIT.lc.norm.tok.en``;
``--src``/``--ref`` give other files. The recommendation printed for each run is the smallest K whose BLEU
is within ``--tolerance`` (default 0.1) of that run's full marginal, and its speed against the full marginal.

The markdown table is printed; ``--json`` prints the results as one JSON object instead, ``--out`` writes them
to a file, and ``--markdown PATH`` writes the table into PATH between the ``kmax_decoding.py`` markers
(``docs/benchmarks.md`` is the record): without it no file is touched. Timings are wall-clock: take them on
an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from machine import cpu_name  # noqa: E402  (benchmarks/machine.py)

TABLE = "kmax_decoding.py"
DEFAULT_KS = (1, 2, 5, 10)
#: the Multi30k study's layout (experiments/multi30k.py): its work directory and raw data
DEFAULT_WORK = Path("runs", "multi30k-converged")
DEFAULT_DATA = Path("data", "multi30k")
DEFAULT_SPLIT = "test_2016_flickr"
WARMUP_LINES = 8


def tok_bleu(hyps: list[str], refs: list[str]) -> float:
    """Tokenised, lowercased corpus BLEU: the figure of ``varattn bleu`` (and of the study's tables)."""
    from varattn.nmt.bleu import quiet_bleu

    return quiet_bleu(hyps, refs)["tok_bleu"]


def read_lines(path: Path) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    return [line.rstrip("\r") for line in text.split("\n")[: -1 if text.endswith("\n") else None]]


def test_files(args) -> tuple[Path, Path]:
    """The source and reference files: ``--src``/``--ref``, else the study's segmented test split."""
    src = Path(args.src) if args.src else args.work / "data" / f"{args.split}.de"
    ref = Path(args.ref) if args.ref else args.data / "task1" / "tok" / f"{args.split}.lc.norm.tok.en"
    return src, ref


def decode_row(trained, src: list[str], refs: list[str], topk: int | None, args) -> dict:
    """Translate ``src`` at K = ``topk`` (None: all positions), timed; sentences/s and BLEU."""
    import torch

    sync = torch.cuda.synchronize if next(trained.model.parameters()).is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    out = trained.translate(src, beam=args.beam, topk=topk or 0, batch_size=args.batch_size)  # 0: every position
    sync()
    seconds = time.perf_counter() - start
    return {
        "k": topk,
        "seconds": seconds,
        "sent_per_s": len(src) / seconds,
        "out_tokens_per_sent": sum(len(t.tokens) + 1 for t in out) / len(src),
        "bleu": tok_bleu([t.text for t in out], refs),
    }


def sweep(run: str, src: list[str], refs: list[str], ks: list[int | None], args) -> dict:
    import varattn

    trained = varattn.load(run, device=args.device)
    rule = trained.objective.predictive
    if ks != [None] and rule != "marginal":
        raise SystemExit(f"{run}: mode {trained.mode} predicts with the {rule} rule, not the exact marginal; K-max "
                         "is measured on the enumerating modes (give a soft run with --soft)")
    rows = []
    for k in ks:
        # warm-up of this setting (first-call allocations, kernels), then the timed decoding
        trained.translate(src[:WARMUP_LINES], beam=args.beam, topk=k or 0, batch_size=args.batch_size)
        rows.append(decode_row(trained, src, refs, k, args))
        print(f"  {run} ({trained.mode}) K={k or 'full'}: {rows[-1]['sent_per_s']:.2f} sent/s, "
              f"BLEU {rows[-1]['bleu']:.2f}", file=sys.stderr, flush=True)
    return {"run": str(run), "mode": trained.mode, "rule": rule, "step": trained.meta.get("step"), "rows": rows}


def recommend(result: dict, tolerance: float) -> dict:
    """The smallest K whose BLEU is within ``tolerance`` of the full marginal (None: only the full marginal is)."""
    full = next(r for r in result["rows"] if r["k"] is None)
    for r in sorted((r for r in result["rows"] if r["k"] is not None), key=lambda r: r["k"]):
        if r["bleu"] >= full["bleu"] - tolerance:
            speedup = r["sent_per_s"] / full["sent_per_s"]
            return {"k": r["k"], "bleu": r["bleu"], "full_bleu": full["bleu"], "speedup": speedup,
                    "faster_than_full": speedup > 1.0}
    return {"k": None, "bleu": full["bleu"], "full_bleu": full["bleu"], "speedup": 1.0, "faster_than_full": False}


def recommendation_line(result: dict, tolerance: float) -> str:
    rec = result["recommendation"]
    if rec["k"] is None:
        return (f"{result['mode']} ({result['run']}): no K tried keeps BLEU within {tolerance} of the full marginal "
                f"({rec['full_bleu']:.2f}); decode with the full marginal.")
    line = (f"{result['mode']} ({result['run']}): K = {rec['k']} is the smallest K whose BLEU ({rec['bleu']:.2f}) is "
            f"within {tolerance} of the full marginal's ({rec['full_bleu']:.2f}), at {rec['speedup']:.2f}x its "
            "sentences/s.")
    if rec["speedup"] <= 1.0:
        line += " (Not faster than the full marginal in this run: keep the full marginal.)"
    return line


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads, device {m['device']}, torch {m['torch']}, "
        f"{m['date']} (1-min load average at start {m['load_average']:.2f}).",
        f"Input: {report['sentences']} sentences of {report['src']}, reference {report['ref']}; beam "
        f"{report['beam']}, batches of {report['batch_size']}; BLEU tokenised and lowercased (`varattn bleu`).",
        "",
        "| model | K | sentences/s | x full marginal | BLEU | BLEU - full | output tokens/sent |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in report["runs"]:
        full = next((r for r in result["rows"] if r["k"] is None), None)
        for r in result["rows"]:
            ratio = r["sent_per_s"] / full["sent_per_s"] if full else None
            diff = r["bleu"] - full["bleu"] if full else None
            lines.append(f"| {result['mode']} | {r['k'] or 'full'} | {r['sent_per_s']:.2f} "
                         f"| {'-' if ratio is None else f'{ratio:.2f}'} | {r['bleu']:.2f} "
                         f"| {'-' if diff is None else f'{diff:+.2f}'} | {r['out_tokens_per_sent']:.1f} |")
    if report.get("soft"):
        r = report["soft"]["rows"][0]
        lines.append(f"| soft ({report['soft']['mode']}) | - | {r['sent_per_s']:.2f} | - | {r['bleu']:.2f} | - "
                     f"| {r['out_tokens_per_sent']:.1f} |")
    lines.append("")
    lines += [f"* {recommendation_line(result, report['tolerance'])}" for result in report["runs"]]
    return "\n".join(lines) + "\n"


def parse_ks(text: str) -> list[int]:
    ks = sorted({int(k) for k in text.split(",") if k.strip()})
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"--ks must be positive integers, got {text!r}")
    return ks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories of enumerating modes (exact marginal)")
    p.add_argument("--soft", metavar="RUN", help="a soft-attention run decoded the same way, for comparison")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK,
                   help=f"the Multi30k study's work directory, holding data/SPLIT.de (default {DEFAULT_WORK})")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help=f"the Multi30k directory with task1/tok (default {DEFAULT_DATA})")
    p.add_argument("--split", default=DEFAULT_SPLIT, help=f"the study's test split (default {DEFAULT_SPLIT})")
    p.add_argument("--src", help="source file, segmented as the runs were trained (default WORK/data/SPLIT.de)")
    p.add_argument("--ref", help="tokenised reference file (default DATA/task1/tok/SPLIT.lc.norm.tok.en)")
    p.add_argument("--ks", type=parse_ks, default=list(DEFAULT_KS), help="comma-separated K (default 1,2,5,10)")
    p.add_argument("--beam", type=int, default=5, help="beam size (default 5)")
    p.add_argument("--lines", type=int, default=None, help="only the first N lines (default: all)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch (default 32)")
    p.add_argument("--tolerance", type=float, default=0.1,
                   help="BLEU a K may lose against the full marginal and still be recommended (default 0.1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--out", type=Path, help="also write the JSON results to this file")
    p.add_argument("--markdown", metavar="PATH",
                   help="also write the table into PATH between the kmax_decoding.py markers (the record: "
                        "docs/benchmarks.md); by default no file is touched")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    src_path, ref_path = test_files(args)
    for path, flag in ((src_path, "--src"), (ref_path, "--ref")):
        if not path.is_file():
            p.error(f"no {path}: prepare the Multi30k study's data (experiments/multi30k.py) or give {flag}")
    src, refs = read_lines(src_path), read_lines(ref_path)
    if len(src) != len(refs):
        p.error(f"{src_path} has {len(src)} lines but {ref_path} has {len(refs)}")
    if args.lines:
        src, refs = src[: args.lines], refs[: args.lines]

    report = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                    "device": args.device, "torch": torch.__version__,
                    "date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
                    "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")},
        "src": str(src_path), "ref": str(ref_path), "sentences": len(src), "beam": args.beam,
        "batch_size": args.batch_size, "tolerance": args.tolerance, "runs": [], "soft": None,
    }
    for run in args.runs:
        result = sweep(run, src, refs, [*args.ks, None], args)
        result["recommendation"] = recommend(result, args.tolerance)
        report["runs"].append(result)
    if args.soft:
        report["soft"] = sweep(args.soft, src, refs, [None], args)

    table = markdown(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.markdown not in (None, "-"):
        import speed  # benchmarks/speed.py: the one writer of tables between markers

        speed.write_markdown(Path(args.markdown), table, TABLE)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
