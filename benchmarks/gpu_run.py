"""The GPU run, prepared (issue 23, item 4): every mode's speed at the ``iwslt14`` sizes in fp32 and bf16,
and the first epoch of the Multi30k study, in one command of under ten minutes.

    python benchmarks/gpu_run.py                                   # on a CUDA machine: JSON to runs/gpu-run/
    python benchmarks/gpu_run.py --markdown docs/benchmarks.md     # ... and the table into the docs
    python benchmarks/gpu_run.py --device cpu --config small --modes soft --precisions fp32 \\
        --repeats 1 --min-seconds 0 --batch-size 8 --decode-sentences 2 --epoch-modes soft --epoch-steps 3
                                                                   # a smoke run on the CPU (seconds)

It installs nothing: what it needs is the package as the README's GPU instructions install it (the CUDA
build of PyTorch, then ``pip install -e .[test,all]``) and the Multi30k files (``varattn prepare multi30k
data/multi30k``, or ``--data DIR``: a directory with ``task1/tok``).

Three parts, in this order, each timed and written to the JSON file as soon as it is done:

1. **Data**: the study's own segmentation of Multi30k (``experiments/multi30k.py``'s ``prepare_data``:
   joint BPE learned on train), into ``WORK/data``; done once, reused by later runs with the same ``--work``.
2. **Speed of every mode** at ``--config`` (default ``iwslt14``), once per ``--precisions`` entry (default
   fp32 and bf16 autocast): ``benchmarks/speed.py``'s measurement itself (``speed.collect``: one worker
   process per mode, training throughput, peak memory, FLOP rate, beam-5 decoding; see its docstring), on
   the IWSLT'14 valid sample when ``--speed-data`` or ``speed.py``'s own default finds ``valid.de.bpe``,
   otherwise on the Multi30k ``val`` split segmented in part 1 (shorter sentences; the JSON says which).
   A precision the device lacks is recorded as skipped.
3. **The Multi30k study's first epoch**, per ``--epoch-modes`` (default: the study's nine, its order): one
   ``varattn train`` process with ``experiments/multi30k.yaml`` (the study's configuration, fp32), one
   epoch (or ``--epoch-steps`` updates), validation at its end: the process's wall-clock seconds, seconds
   per update, the median training tokens/s of its log and the validation perplexity, beside the study's
   own CPU figure for that epoch from the committed results.

``--budget-s`` (default 570) bounds the whole run, data preparation included: part 2 ends by ``--speed-share``
of it, split evenly between the precisions (a worker still running at its precision's end is stopped and
reported), part 3 by the rest; what was not reached is recorded as "not run".
The JSON goes to ``--out`` (default ``WORK/gpu_run.json``, outside docs/); the markdown table is printed,
and written into a file between the ``gpu_run.py`` markers only with ``--markdown PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "experiments"))
import speed  # noqa: E402  (benchmarks/speed.py: the measurement, the machine line, the markdown writer)

#: the marker name of this script's table in the docs
TABLE = "gpu_run.py"
DEFAULT_WORK = Path("runs", "gpu-run")


def _multi30k():
    """``experiments/multi30k.py``: the study's data preparation, configuration, mode order, child environment
    and JSON-lines reader."""
    import multi30k

    return multi30k


def commit() -> str | None:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or None


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -- part 2: speed.py's table -----------------------------------------------------------------------
def speed_sample(arg: str | None, segmented: Path, work: Path) -> tuple[Path, str]:
    """The directory of ``valid.{de,en}.bpe`` that speed.py samples its batches from, and what it holds."""
    if arg:
        return Path(arg), "given (--speed-data)"
    iwslt = speed.data_dir(None)
    if (iwslt / "valid.de.bpe").is_file():
        return iwslt, "IWSLT'14 valid (BPE)"
    out = work / "speed-sample"
    out.mkdir(parents=True, exist_ok=True)
    for lang in ("de", "en"):
        shutil.copyfile(segmented / f"val.{lang}", out / f"valid.{lang}.bpe")
    return out, "Multi30k val (the study's joint BPE)"


def speed_args(args, precision: str, sample: Path):
    """speed.py's arguments for one precision, made by its own parser."""
    argv = ["--configs", args.config, "--repeats", str(args.repeats), "--min-seconds", str(args.min_seconds),
            "--enum-repeats", str(args.enum_repeats), "--batches", str(args.batches),
            "--batch-size", str(args.batch_size), "--decode-sentences", str(args.decode_sentences),
            "--threads", str(args.threads), "--precision", precision, "--data", str(sample),
            "--peak-size", str(args.peak_size)]
    for s in args.set:
        argv += ["--set", s]
    out = speed.build_parser().parse_args(argv)
    out.device = args.device  # already resolved
    return out


def run_speed(args, precision: str, sample: Path, modes: list[str], deadline: float) -> dict:
    import torch

    from varattn.device import check_precision
    from varattn.errors import VarattnError

    try:
        check_precision(torch.device(args.device), precision)
    except VarattnError as exc:
        return {"skipped": str(exc)}
    start = time.monotonic()
    report = speed.collect(speed_args(args, precision, sample), [args.config], modes, deadline=deadline)
    report["wall_s"] = round(time.monotonic() - start, 1)
    return report


# -- part 3: the Multi30k study's first epoch ---------------------------------------------------------
def study_cpu_epoch(mode: str) -> dict | None:
    """The committed CPU study's wall-clock seconds for ``mode``'s first epoch (converged study's seed 1, else the
    early study), or None."""
    results = REPO / "experiments" / "results"
    for path in (results / "multi30k-converged" / f"{mode}-s1.json", results / "multi30k" / f"{mode}.json"):
        if not path.is_file():
            continue
        result = json.loads(path.read_text(encoding="utf-8"))
        machine = result.get("machine", {})
        for point in result.get("curve", []):
            if abs(point.get("epoch", 0) - 1.0) < 1e-9:
                return {"wall_s": point["wall_s"], "step": point["step"], "from": str(path.relative_to(REPO)),
                        "cpu": machine.get("cpu"), "threads": machine.get("threads")}
    return None


def run_epoch(args, mode: str, segmented: Path, work: Path, timeout: float) -> dict:
    m30k = _multi30k()
    run_dir = work / "epoch" / mode
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    length = ["--max-steps", str(args.epoch_steps)] if args.epoch_steps else ["--epochs", "1"]
    cmd = [sys.executable, "-m", "varattn.cli", "train", "--config", str(m30k.CONFIG), "--mode", mode,
           "--train", str(segmented / "train"), "--valid", str(segmented / "val"), "--src-lang", "de",
           "--tgt-lang", "en", *length, "--device", args.device, "--threads", str(args.threads),
           "--out", str(run_dir), "--no-progress", "--no-tensorboard"]
    for s in args.epoch_set:
        cmd += ["--set", s]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=m30k.child_env(args.threads), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "error": f"stopped after {timeout:.0f} s (time budget)"}
    wall = time.monotonic() - start
    if proc.returncode != 0:
        return {"mode": mode, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    records = m30k.read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in records if r.get("split") == "train"]
    valid = [r for r in records if r.get("split") == "valid"]
    rates = [r["tokens_per_s"] for r in train if r.get("tokens_per_s")]
    steps = valid[-1]["step"] if valid else (train[-1]["step"] if train else None)
    out = {
        "mode": mode,
        "steps": steps,
        "wall_s": round(wall, 2),
        "s_per_step": wall / steps if steps else None,
        "train_tokens_per_s_median": statistics.median(rates) if rates else None,
        "valid_ppl": valid[-1].get("ppl") if valid else None,
        "valid_elbo_ppl": valid[-1].get("elbo_ppl") if valid else None,
        "study_cpu": study_cpu_epoch(mode),
    }
    cpu = out["study_cpu"]
    # the study's figure is for the same updates only when a whole epoch ran here too
    out["speedup_vs_study_cpu"] = (cpu["wall_s"] / wall if cpu and steps and abs(cpu["step"] - steps) <= 2
                                   else None)
    if not args.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


# -- the report ---------------------------------------------------------------------------------------
def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(report: dict) -> str:
    lines = [f"GPU run of {report['date']} (`benchmarks/gpu_run.py`, commit {(report['commit'] or '?')[:10]}, "
             f"{report['wall_s']:.0f} s in all, budget {report['budget_s']:.0f} s).", ""]
    sample = report["speed_sample"]
    for precision, part in report["speed"].items():
        lines.append(f"### Speed of every mode, `{report['config']}` sizes, {precision}")
        lines.append("")
        if "skipped" in part:
            lines += [f"Skipped: {part['skipped']}", ""]
            continue
        lines += [f"Sample: {sample['source']}.", "", speed.markdown(part)]
    epoch = report["multi30k_epoch"]
    lines += [f"### The Multi30k study's first epoch ({epoch['config']}, fp32)", ""]
    if "skipped" in epoch:
        lines += [f"Skipped: {epoch['skipped']}", ""]
        return "\n".join(lines)
    lines += [f"Data prepared in {epoch['prepare_s']:.0f} s (0: already segmented). The wall-clock figure is the "
              "whole `varattn train` process: start-up, data, the epoch's updates, checkpoints and the "
              "validation at its end.", "",
              "| mode | updates | wall-clock s | s per update | train tokens/s (median) | valid ppl "
              "| the CPU study's epoch, s | speed-up |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, r in epoch["modes"].items():
        if "error" in r:
            lines.append(f"| {mode} | {r['error']} |" + " |" * 6)
            continue
        cpu = (r.get("study_cpu") or {}).get("wall_s")
        ppl = r["valid_elbo_ppl"] if r.get("valid_elbo_ppl") is not None else r["valid_ppl"]
        lines.append(f"| {mode} | {r['steps']} | {_fmt(r['wall_s'])} | {_fmt(r['s_per_step'], 3)} "
                     f"| {_fmt(r['train_tokens_per_s_median'], 0)} | {_fmt(ppl, 2)} | {_fmt(cpu)} "
                     f"| {_fmt(r.get('speedup_vs_study_cpu'), 2)} |")
    lines.append("")
    return "\n".join(lines)


def build_parser():
    import argparse

    from varattn.device import PRECISIONS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
    p.add_argument("--data", type=Path, default=REPO / "data" / "multi30k",
                   help="Multi30k directory with task1/tok (default data/multi30k: `varattn prepare multi30k`)")
    p.add_argument("--work", type=Path, default=None,
                   help=f"segmented data, speed sample and epoch runs (default {DEFAULT_WORK} in the repository)")
    p.add_argument("--out", type=Path, default=None, help="the JSON report (default WORK/gpu_run.json)")
    p.add_argument("--markdown", default=None, metavar="PATH",
                   help="also write the table into PATH between the gpu_run.py markers (the record: "
                        "docs/benchmarks.md); by default no docs are touched")
    p.add_argument("--budget-s", type=float, default=570.0, help="wall-clock bound of the whole run (default 570)")
    p.add_argument("--speed-share", type=float, default=0.55,
                   help="part 2 (speed) ends by this fraction of the budget (default 0.55); part 3 gets the rest")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    # part 2
    p.add_argument("--config", default="iwslt14", help="shipped config whose sizes part 2 times (default iwslt14)")
    p.add_argument("--modes", default=None, help="comma-separated modes of part 2 (default: all nine)")
    p.add_argument("--precisions", default="fp32,bf16",
                   help=f"comma-separated, of {', '.join(PRECISIONS)} (default fp32,bf16)")
    p.add_argument("--speed-data", default=None,
                   help="directory with valid.{de,en}.bpe for part 2's sample (default: IWSLT'14 where speed.py "
                        "finds it, else the Multi30k val split)")
    p.add_argument("--repeats", type=int, default=3, help="speed.py --repeats (default 3)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="speed.py --min-seconds (default 2)")
    p.add_argument("--enum-repeats", type=int, default=2, help="speed.py --enum-repeats (default 2)")
    p.add_argument("--batches", type=int, default=2, help="speed.py --batches (default 2)")
    p.add_argument("--batch-size", type=int, default=32, help="speed.py --batch-size (default 32)")
    p.add_argument("--decode-sentences", type=int, default=32, help="speed.py --decode-sentences (default 32)")
    p.add_argument("--peak-size", type=int, default=2048, help="speed.py --peak-size (default 2048)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for part 2")
    # part 3
    p.add_argument("--epoch-modes", default=None,
                   help="comma-separated modes of part 3 (default: the study's nine; 'none' skips part 3)")
    p.add_argument("--epoch-steps", type=int, default=None,
                   help="updates instead of one epoch (smoke runs); the validation follows them")
    p.add_argument("--epoch-set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for part 3 (e.g. max_valid_sentences=100 in a smoke run)")
    p.add_argument("--keep-runs", action="store_true", help="keep part 3's run directories (WORK/epoch/MODE)")
    return p


def main(argv: list[str] | None = None) -> int:
    import datetime

    from varattn.device import resolve_device
    from varattn.errors import VarattnError
    from varattn.latent import mode_names

    start = time.monotonic()
    parser = build_parser()
    args = parser.parse_args(argv)
    deadline = start + args.budget_s
    args.threads = args.threads or os.cpu_count() or 1
    try:
        args.device = str(resolve_device(args.device))
    except VarattnError as exc:
        parser.error(str(exc))
    if not (args.data / "task1" / "tok").is_dir():
        parser.error(f"no Multi30k data in {args.data} (no task1/tok): run `varattn prepare multi30k data/multi30k` "
                     "or give --data")
    m30k = _multi30k()
    modes = args.modes.split(",") if args.modes else mode_names()
    epoch_modes = [] if args.epoch_modes == "none" else (args.epoch_modes.split(",") if args.epoch_modes
                                                         else list(m30k.MODES))
    work = (args.work or REPO / DEFAULT_WORK).resolve()
    out = (args.out or work / "gpu_run.json").resolve()

    report: dict = {
        "script": TABLE, "commit": commit(), "date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
        "budget_s": args.budget_s, "config": args.config, "device": args.device,
        "machine": speed.machine(args.threads, args.device),
        "speed": {}, "multi30k_epoch": {"config": str(Path(m30k.CONFIG).relative_to(REPO)), "modes": {}},
    }

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    def save() -> None:
        report["wall_s"] = round(time.monotonic() - start, 1)
        write_json(out, report)

    # 1. data
    t0 = time.monotonic()
    segmented = m30k.prepare_data(args.data.resolve(), work)
    report["multi30k_epoch"]["prepare_s"] = round(time.monotonic() - t0, 1)
    report["multi30k_epoch"]["data"] = str(segmented)
    sample, source = speed_sample(args.speed_data, segmented, work)
    report["speed_sample"] = {"dir": str(sample), "source": source}
    log(f"data ready in {report['multi30k_epoch']['prepare_s']} s; speed sample: {source}")
    save()

    # 2. speed of every mode, per precision
    speed_deadline = start + args.speed_share * args.budget_s
    precisions = args.precisions.split(",")
    for k, precision in enumerate(precisions):
        # each precision gets an equal share of what is left of part 2's time, so that fp32 cannot starve bf16
        now = time.monotonic()
        log(f"speed, {args.config}, {precision} ...")
        report["speed"][precision] = run_speed(args, precision, sample, modes,
                                               now + (speed_deadline - now) / (len(precisions) - k))
        save()

    # 3. the Multi30k study's first epoch
    for mode in epoch_modes:
        left = deadline - time.monotonic()
        if left <= 0:
            report["multi30k_epoch"]["modes"][mode] = {"mode": mode, "error": "not run: time budget spent"}
            continue
        log(f"Multi30k first epoch, {mode} ...")
        r = run_epoch(args, mode, segmented, work, left)
        report["multi30k_epoch"]["modes"][mode] = r
        log(f"  {mode}: " + (r["error"] if "error" in r else f"{r['wall_s']:.1f} s, valid ppl {r['valid_ppl']:.2f}"))
        save()
    if not epoch_modes:
        report["multi30k_epoch"]["skipped"] = "--epoch-modes none"

    save()
    table = markdown(report)
    if args.markdown not in (None, "-"):
        speed.write_markdown(Path(args.markdown), table, TABLE)
        log(f"wrote the table into {args.markdown}")
    print(table)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
