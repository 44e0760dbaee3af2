"""Fingerprints of fixed-seed training runs, to show that a refactoring changed no number.

    python experiments/behaviour_fingerprint.py --out before.json         # on the code before the change
    python experiments/behaviour_fingerprint.py --compare before.json     # after it: exit 1 on any difference

Each case is a short fixed-seed ``varattn train`` (NMT, the built-in synthetic task) or ``varattn vqa train``
(easy-VQA, when the ``vqa`` extra is installed) with one thread; its fingerprint is the SHA-256 of
``metrics.jsonl`` without the wall-clock fields (``tokens_per_s``, ``questions_per_s``) and the SHA-256 of the
best checkpoint's weights. Same code, same machine, same fingerprints; docs/reliability.md says what else can
move a number.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: wall-clock speeds: NMT counts tokens, VQA questions (called tokens_per_s before issue 20)
TIMING_KEYS = ("tokens_per_s", "questions_per_s")
SMALL_NMT = ["--set", "synthetic_sizes=[600,60,60]", "--max-steps", "60", "--set", "log_every=5"]
CASES = {
    **{f"nmt-{mode}": ["train", "--mode", mode, *SMALL_NMT]
       for mode in ("soft", "marginal", "hard-enum", "hard-sample", "var-enum", "var-sample", "var-relaxed",
                    "var-gumbel", "rws")},
    "nmt-var-relaxed-warmup": ["train", "--mode", "var-relaxed", *SMALL_NMT, "--set",
                               "objective.var-relaxed.warmup_steps=20"],
    "vqa-var-enum": ["vqa", "train", "--mode", "var-enum", "--max-steps", "30", "--set", "data.valid_images=50"],
    "vqa-var-sample": ["vqa", "train", "--mode", "var-sample", "--max-steps", "30", "--set", "data.valid_images=50"],
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(run_dir: Path) -> dict:
    lines = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
        lines.append(json.dumps(record, sort_keys=True))
    return {"metrics": sha256("\n".join(lines).encode()),
            "best": sha256((run_dir / "best" / "weights.safetensors").read_bytes()),
            "records": len(lines)}


def run_case(name: str, argv: list[str], work: Path) -> dict | None:
    if argv[0] == "vqa":
        try:
            import easy_vqa  # noqa: F401
        except ImportError:
            print(f"{name}: skipped (the vqa extra is not installed)", flush=True)
            return None
    out = work / name
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "varattn.cli", *argv, "--out", str(out), "--threads", "1", "--device", "cpu",
           "--no-progress", "--no-tensorboard"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
    result = fingerprint(out)
    print(f"{name}: {result['metrics'][:12]} {result['best'][:12]} ({result['records']} records)", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="write the fingerprints here")
    p.add_argument("--compare", type=Path, help="compare with fingerprints written before; exit 1 on a difference")
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run_case(name, CASES[name], Path(tmp)) for name in args.cases}
    results = {k: v for k, v in results.items() if v is not None}
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    if args.compare:
        before = json.loads(args.compare.read_text(encoding="utf-8"))
        differ = [k for k in results if k in before and before[k] != results[k]]
        for k in differ:
            print(f"DIFFERS: {k}: {before[k]} -> {results[k]}")
        print(f"{len(results) - len(differ)} of {len(results)} cases identical")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
