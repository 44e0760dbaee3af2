"""The Multi30k German-English study (issues 14, 19): every mode, one shared configuration, on a CPU.

    varattn prepare multi30k data/multi30k                                 # the data, once
    python experiments/multi30k.py                                         # train + evaluate what is missing
    python experiments/multi30k.py --report                                # rebuild docs/results.md only
    python experiments/multi30k.py --modes soft:2 var-enum                 # some runs, in this order
    python experiments/multi30k.py --study early                           # the 3-epoch budget of issue 14

Three studies (``STUDIES``): ``converged`` (the default: each mode epoch by epoch until its validation has
not improved for two epochs, capped at 20; three seeds for ``soft``, ``var-sample`` and ``hard-sample``),
``early`` (issue 14's equal 3 epochs, validated every half epoch) and ``transformer`` (issue 21: the
Transformer of ``experiments/multi30k-transformer.yaml`` in four modes, the converged rule capped at 10 epochs).

What it does, per mode (in ``MODES`` order, cheap and informative modes first, ``var-relaxed`` last):

1. Data, once: the lowercased, Moses-tokenised Multi30k task-1 files (``task1/tok``) segmented with
   joint BPE (subword-nmt, ``BPE_MERGES`` merges) learned on the training split only, written under
   ``WORK/data`` (fairseq-style prefixes ``train``, ``val``, ``test_2016_flickr``, ``test_2017_flickr``).
2. Training with ``varattn train`` and the shared config ``experiments/multi30k.yaml`` (only ``--mode``
   differs), in segments of ``SEGMENT_STEPS`` updates: each segment is one ``varattn train`` process
   (the first fresh, the others ``--resume``) that ends with a validation on all of ``val``. The wall
   clock of every segment is recorded, which gives the learning curves against time. The budget is
   the same for every mode: at most ``MAX_EPOCHS`` epochs of updates, stopped earlier when the
   validation metric (the trainer's: exp(-ELBO) with an inference network, the exact perplexity
   otherwise) has not improved for ``PATIENCE`` validations. The best validation checkpoint is kept.
3. Evaluation of the best checkpoint on ``test_2016_flickr`` and ``test_2017_flickr`` (``evaluate`` with
   ``--topk 5``, ``translate --beam 5`` and ``bleu``), prior/posterior alignments of a few real pairs,
   then ``experiments/results/multi30k/MODE.json``: small, meant to be committed.

Everything that trains or evaluates runs in a subprocess started from this checkout (``python -m
varattn.cli``, and this script with ``--evaluate-mode`` for the evaluation), so the code a mode uses is
the checkout's at the moment the mode starts. Resumable: a mode whose JSON exists is skipped; a mode
interrupted in training continues from its run directory's ``resume/`` checkpoint (and its recorded
segments); an interrupted evaluation is redone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "multi30k.yaml"
RESULTS = ROOT / "experiments" / "results" / "multi30k"
REPORT = ROOT / "docs" / "results.md"
IMG = ROOT / "docs" / "img"

sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_name  # noqa: E402  benchmarks/machine.py: one reader of the CPU name

#: the order modes are trained in: the cheap, most informative first; var-relaxed last
MODES = ["soft", "var-sample", "hard-sample", "var-enum", "marginal", "hard-enum", "var-gumbel", "rws", "var-relaxed"]
SPLITS = ["train", "val", "test_2016_flickr", "test_2017_flickr"]
TESTS = ["test_2016_flickr", "test_2017_flickr"]
TOK_NAME = "{split}.lc.norm.tok.{lang}"
BPE_MERGES = 4000
SEGMENT_STEPS = 453  # the early study: half an epoch of 29,000 pairs in batches of 32 (906 batches)


@dataclass(frozen=True)
class Study:
    """One budget of the study: where its results go, how long each mode trains, how many seeds."""

    name: str
    results: Path
    #: updates per segment (one ``varattn train`` process ending in a validation); None: one epoch
    segment_steps: int | None
    #: the cap, in epochs
    max_epochs: int
    #: stop when the best validation is this many segments behind the latest
    patience: int
    #: seeds per mode (modes not named: seed 1 only)
    seeds: dict
    #: the shared training configuration every mode of this study trains with
    config: Path = CONFIG
    #: the modes this study trains, in order (default: all nine)
    modes: tuple[str, ...] = tuple(MODES)

    def seeds_of(self, mode: str) -> list[int]:
        return list(self.seeds.get(mode, [1]))

    def job_name(self, mode: str, seed: int) -> str:
        """Run directory and result file name of ``mode`` trained with ``seed``."""
        return mode if self.name == "early" else f"{mode}-s{seed}"


STUDIES = {
    # the paper's recipe: until the validation metric has not improved for two epochs, capped at 20 epochs;
    # the three cheap modes of the headline comparison with three seeds
    "converged": Study("converged", ROOT / "experiments" / "results" / "multi30k-converged", None, 20, 2,
                       {"soft": [1, 2, 3], "var-sample": [1, 2, 3], "hard-sample": [1, 2, 3]}),
    # issue 14's equal budget of 3 epochs (2,718 updates), validated every half epoch: early learning speed
    "early": Study("early", RESULTS, SEGMENT_STEPS, 3, 3, {}),
    # issue 21: the Transformer with the latent alignment at its output, the same data, batches and stopping
    # rule, capped at 10 epochs (docs/transformer.md): soft attention against the three modes the issue names
    "transformer": Study("transformer", ROOT / "experiments" / "results" / "multi30k-transformer", None, 10, 2, {},
                         ROOT / "experiments" / "multi30k-transformer.yaml",
                         ("soft", "var-sample", "marginal", "var-enum")),
}
TOPK = 5
BEAM = 5
SAMPLED_ALIGNMENTS = 10  # relaxed model: alignments sampled per decoding step (translate --sample-alignments)
#: a few real test_2016 pairs (indices) whose alignments are kept for the heatmaps
HEATMAP_PAIRS = [4, 18, 46]  # the first three with 8-11 words on both sides and no split English word
SEGMENTS_FILE = "study_segments.jsonl"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    return env


def run(cmd: list[str], threads: int, stdout=None) -> subprocess.CompletedProcess:
    """Run ``cmd`` with this checkout's package; raise with its stderr tail when it fails."""
    proc = subprocess.run(cmd, env=child_env(threads), stdout=stdout if stdout is not None else subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def varattn(*args: str) -> list[str]:
    return [sys.executable, "-m", "varattn.cli", *args]


# -- data ------------------------------------------------------------------------------------------
def prepare_data(data: Path, work: Path) -> Path:
    """Joint BPE learned on train only; returns the directory of segmented prefixes."""
    out = work / "data"
    done = out / "DONE"
    if done.exists():
        return out
    from subword_nmt.apply_bpe import BPE
    from subword_nmt.learn_bpe import learn_bpe

    tok = data / "task1" / "tok"
    out.mkdir(parents=True, exist_ok=True)
    codes = out / "bpe.codes"
    joint = [line for lang in ("de", "en")
             for line in (tok / TOK_NAME.format(split="train", lang=lang)).read_text(encoding="utf-8").splitlines()]
    log(f"learning joint BPE ({BPE_MERGES} merges) on {len(joint)} training lines")
    with open(codes, "w", encoding="utf-8") as f:
        learn_bpe(joint, f, BPE_MERGES)
    with open(codes, encoding="utf-8") as f:
        bpe = BPE(f)
    for split in SPLITS:
        for lang in ("de", "en"):
            lines = (tok / TOK_NAME.format(split=split, lang=lang)).read_text(encoding="utf-8").splitlines()
            (out / f"{split}.{lang}").write_text("".join(bpe.process_line(x) + "\n" for x in lines), encoding="utf-8")
    done.write_text("ok\n")
    return out


def reference(data: Path, split: str, lang: str = "en") -> Path:
    return data / "task1" / "tok" / TOK_NAME.format(split=split, lang=lang)


# -- training --------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut by a crash
    return out


def valid_metric(record: dict) -> float:
    return record["elbo_ppl"] if record.get("elbo_ppl") is not None else record["ppl"]


def curve(run_dir: Path) -> list[dict]:
    """One point per finished segment: step, epoch, cumulative wall-clock seconds, validation figures."""
    segments = read_jsonl(run_dir / SEGMENTS_FILE)
    valid = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("split") == "valid"}
    points, elapsed = [], 0.0
    for seg in segments:
        elapsed += seg["wall_s"]
        rec = valid.get(seg["step"])
        if rec is None:
            continue
        epoch = seg["epoch"] if "epoch" in seg else seg["step"] / seg["steps_per_epoch"]
        points.append({"step": seg["step"], "epoch": epoch, "wall_s": round(elapsed, 1),
                       "ppl": rec["ppl"], "elbo_ppl": rec.get("elbo_ppl"), "accuracy": rec.get("accuracy"),
                       "prior_entropy": rec.get("prior_entropy"), "posterior_entropy": rec.get("posterior_entropy"),
                       "lr": rec.get("lr")})
    return points


def stop_reason(points: list[dict], study: Study) -> str | None:
    """Why training of a mode is over (None: it goes on): the cap, or no improvement for ``patience`` segments."""
    unit = "epochs" if study.segment_steps is None else "validations"
    if points and points[-1]["epoch"] >= study.max_epochs - 1e-9:
        return f"budget: {study.max_epochs} epochs"
    if len(points) > study.patience:
        best = min(range(len(points)), key=lambda k: valid_metric(points[k]))
        if len(points) - 1 - best >= study.patience:
            return f"early stop: no improvement in {study.patience} {unit}"
    return None


def train_mode(mode: str, seed: int, data_dir: Path, work: Path, threads: int, study: Study,
               device: str = "cpu") -> Path:
    """Train ``mode`` with ``seed`` segment by segment on ``device`` until :func:`stop_reason` says it is done."""
    run_dir = work / "runs" / study.job_name(mode, seed)
    steps_per_epoch = 2 * (study.segment_steps or SEGMENT_STEPS)  # the early study: two segments an epoch
    while True:
        points = curve(run_dir)
        reason = stop_reason(points, study)
        if reason:
            log(f"{run_dir.name}: training done ({reason})")
            return run_dir
        if study.segment_steps is None:  # whole epochs: the trainer validates at the epoch's end
            epochs_done = round(points[-1]["epoch"]) if points else 0
            target = ["--epochs", str(epochs_done + 1)]
        else:
            target = ["--max-steps", str((points[-1]["step"] if points else 0) + study.segment_steps)]
        if (run_dir / "run.json").exists() and ((run_dir / "resume").exists() or (run_dir / "resume.bak").exists()):
            cmd = varattn("train", "--resume", str(run_dir), *target, "--threads", str(threads), "--device", device,
                          "--no-progress")
        else:
            if run_dir.exists():  # started but never saved: start again
                import shutil

                shutil.rmtree(run_dir)
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            cmd = varattn("train", "--config", str(study.config), "--mode", mode, "--seed", str(seed), "--train",
                          str(data_dir / "train"), "--valid", str(data_dir / "val"), "--src-lang", "de",
                          "--tgt-lang", "en", *target, "--threads", str(threads), "--device", device,
                          "--out", str(run_dir), "--no-progress", "--no-tensorboard")
        start = time.monotonic()
        proc = run(cmd, threads)
        wall = time.monotonic() - start
        last = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("split") == "valid"][-1]
        segment = {"step": last["step"], "wall_s": wall, "steps_per_epoch": steps_per_epoch}
        if study.segment_steps is None:
            segment["epoch"] = int(target[1])
        with open(run_dir / SEGMENTS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(segment) + "\n")
        log(f"{run_dir.name}: {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ''} ({wall:.0f} s)")


# -- evaluation (in a subprocess: --evaluate-mode) -------------------------------------------------
def model_info(run_dir: Path, threads: int) -> dict:
    """What the trained model offers, asked of its objective (no mode names compared here)."""
    code = "\n".join([
        "import json, sys",
        "from varattn.nmt.run import load_run",
        "o = load_run(sys.argv[1], 'best', 'cpu').objective",
        "try:",
        "    o.prediction_sampler(1)",
        "    sampler = True",
        "except Exception:",
        "    sampler = False",
        "print(json.dumps({'sampled': getattr(o, 'importance_samples', None) is not None, 'predictive': o.predictive,",
        "                  'samples': getattr(o, 'importance_samples', None), 'sampled_prediction': sampler}))",
    ])
    return json.loads(run([sys.executable, "-c", code, str(run_dir)], threads).stdout.strip().splitlines()[-1])


def score(run_dir: Path, prefix: Path, ref: Path, hyp: Path, evaluate_args: list[str], threads: int,
          device: str = "cpu") -> dict:
    """``evaluate`` on ``prefix`` (.de/.en), beam-``BEAM`` translation of its source into ``hyp`` and BLEU
    against the tokenised reference ``ref``, with the seconds the first two took."""
    start = time.monotonic()
    ev = json.loads(run(varattn("evaluate", str(run_dir), "--prefix", str(prefix), *evaluate_args, "--json",
                                "--device", device), threads).stdout)
    eval_s = time.monotonic() - start
    start = time.monotonic()
    # --topk 0: BLEU of the full marginal, as every committed record was decoded (the default is K-max 5)
    run(varattn("translate", str(run_dir), "--input", str(prefix) + ".de", "--output", str(hyp),
                "--beam", str(BEAM), "--topk", "0", "--device", device), threads)
    decode_s = time.monotonic() - start
    bleu = json.loads(run(varattn("bleu", "--ref", str(ref), "--hyp", str(hyp), "--json"), threads).stdout)
    return {"evaluate": ev, "bleu": bleu, "evaluate_s": round(eval_s, 1), "decode_s": round(decode_s, 1)}


def evaluate_mode(name: str, data: Path, work: Path, threads: int, device: str = "cpu") -> dict:
    """Test figures of the best checkpoint of the run ``name``; runs with this checkout's code."""
    run_dir, data_dir = work / "runs" / name, work / "data"
    out_dir = run_dir / "study_eval"
    out_dir.mkdir(exist_ok=True)
    info = model_info(run_dir, threads)
    kmax = ["--topk", str(TOPK)] if info["predictive"] in ("marginal", "soft") else []
    seed = ["--seed", "1"] if info["sampled"] else []
    result: dict = {"tests": {}}
    for split in TESTS:
        prefix = data_dir / split
        entry = score(run_dir, prefix, reference(data, split), out_dir / f"{split}.beam{BEAM}.en", [*kmax, *seed],
                      threads, device)
        entry.update(relaxed_extras(info, entry["evaluate"], run_dir, prefix, split, data, out_dir, threads, device))
        result["tests"][split] = entry
        log(f"{name} {split}: ppl {entry['evaluate']['ppl']:.3f}, BLEU {entry['bleu'].get('tok_bleu')}")
    result["alignments"] = alignments(run_dir, data_dir / "test_2016_flickr", threads, device)
    return result


def relaxed_extras(info: dict, ev: dict, run_dir: Path, prefix: Path, split: str, data: Path, out_dir: Path,
                   threads: int, device: str = "cpu") -> dict:
    """Extra figures for a model whose perplexity is a sampled estimate and that can sample alignments.

    The estimate's spread: the default sample count N under seeds 1 (the main evaluation), 2 and 3, and
    2N under seed 1 (the doubling check), on the first test set only (each run costs N output layers per
    token); BLEU with sampled alignments (``translate --sample-alignments``) on both. Nothing for modes
    scored and decoded exactly.
    """
    extras: dict = {}
    n = info["samples"]
    if info["sampled"] and split == TESTS[0]:
        runs = [{"samples": n, "seed": 1, "ppl": ev["ppl"]}]
        for samples, seed in ((n, 2), (n, 3), (2 * n, 1)):
            other = json.loads(run(varattn("evaluate", str(run_dir), "--prefix", str(prefix), "--json", "--device",
                                           device, "--seed", str(seed), "--samples", str(samples)), threads).stdout)
            runs.append({"samples": samples, "seed": seed, "ppl": other["ppl"]})
        extras["estimator"] = {"default_samples": n, "runs": runs}
    if info["sampled_prediction"]:
        hyp = out_dir / f"{split}.beam{BEAM}.sampled{SAMPLED_ALIGNMENTS}.en"
        run(varattn("translate", str(run_dir), "--input", str(prefix) + ".de", "--output", str(hyp), "--beam",
                    str(BEAM), "--device", device, "--sample-alignments", str(SAMPLED_ALIGNMENTS), "--seed", "1"),
            threads)
        extras["bleu_sampled"] = json.loads(run(varattn("bleu", "--ref", str(reference(data, split)), "--hyp",
                                                        str(hyp), "--json"), threads).stdout)
        extras["bleu_sampled"]["alignments_per_step"] = SAMPLED_ALIGNMENTS
    return extras


def alignments(run_dir: Path, prefix: Path, threads: int, device: str = "cpu") -> list[dict]:
    """Prior and posterior (q where the model has one, else the exact posterior) of ``HEATMAP_PAIRS``."""
    src = Path(str(prefix) + ".de").read_text(encoding="utf-8").splitlines()
    tgt = Path(str(prefix) + ".en").read_text(encoding="utf-8").splitlines()
    pairs_dir = run_dir / "study_eval"
    (pairs_dir / "pairs.de").write_text("".join(src[i] + "\n" for i in HEATMAP_PAIRS), encoding="utf-8")
    (pairs_dir / "pairs.en").write_text("".join(tgt[i] + "\n" for i in HEATMAP_PAIRS), encoding="utf-8")
    out: list[dict] = [{"index": i} for i in HEATMAP_PAIRS]
    for method in ("prior", "posterior", "exact"):
        proc = subprocess.run(varattn("align", str(run_dir), "--src", str(pairs_dir / "pairs.de"), "--tgt",
                                      str(pairs_dir / "pairs.en"), "--method", method, "--json", "--device", device),
                              env=child_env(threads), capture_output=True, text=True)
        if proc.returncode != 0:  # no posterior without an inference network
            continue
        for k, line in enumerate(proc.stdout.strip().splitlines()):
            rec = json.loads(line)
            out[k]["src_tokens"], out[k]["tgt_tokens"] = rec["src_tokens"], rec["tgt_tokens"]
            out[k][method] = [[round(v, 3) for v in row] for row in rec["matrix"]]
    return out


def summarize_training(run_dir: Path) -> dict:
    records = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in records if r.get("split") == "train"]
    rates = sorted(r["tokens_per_s"] for r in train if r.get("tokens_per_s"))
    segments = read_jsonl(run_dir / SEGMENTS_FILE)
    cfg = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    return {
        "train_wall_s": round(sum(s["wall_s"] for s in segments), 1),
        "tokens_per_s_median": rates[len(rates) // 2] if rates else None,
        "skipped_steps": train[-1].get("skipped_steps") if train else None,
        "config": cfg.get("config"),
        "model": cfg.get("model"),
    }


def finish_mode(mode: str, seed: int, data: Path, work: Path, threads: int, study: Study, device: str = "cpu") -> Path:
    name = study.job_name(mode, seed)
    run_dir = work / "runs" / name
    proc = run([sys.executable, str(Path(__file__).resolve()), "--evaluate-mode", name, "--data", str(data),
                "--work", str(work), "--threads", str(threads), "--device", device], threads)
    evaluation = json.loads(proc.stdout.strip().splitlines()[-1])
    points = curve(run_dir)
    best = min(points, key=valid_metric)
    result = {
        "mode": mode,
        "seed": seed,
        "study": {"budget": study.name, "bpe_merges": BPE_MERGES, "segment_steps": study.segment_steps,
                  "max_epochs": study.max_epochs, "patience": study.patience, "topk": TOPK, "beam": BEAM},
        "stopped": stop_reason(points, study),
        "best": {"step": best["step"], "epoch": best["epoch"], "valid_ppl": best["ppl"],
                 "valid_elbo_ppl": best.get("elbo_ppl")},
        "curve": points,
        **summarize_training(run_dir),
        **evaluation,
        **provenance(threads, device),
    }
    return write_result(study.results, name, result)


def provenance(threads: int, device: str = "cpu") -> dict:
    """Where a result came from: the machine (with the GPU's name when ``device`` is one), the checkout's commit,
    the time it was written."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], stdout=subprocess.PIPE, text=True).stdout
    machine = {"threads": threads, "cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}
    if device != "cpu":
        import torch

        machine["device"] = device
        machine["gpu"] = torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else None
    return {"machine": machine,
            "commit": commit.strip(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_result(results_dir: Path, mode: str, result: dict) -> Path:
    """``results_dir/MODE.json``, written atomically."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{mode}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# -- the report ------------------------------------------------------------------------------------
def load_results(results_dir: Path | None = None) -> dict[str, dict]:
    """The per-mode JSON files of ``results_dir`` (default: the study's), in ``MODES`` order."""
    out = {}
    for mode in MODES:
        path = (results_dir or RESULTS) / f"{mode}.json"
        if path.exists():
            out[mode] = json.loads(path.read_text(encoding="utf-8"))
    return out


def load_groups(results_dir: Path) -> dict[str, list[dict]]:
    """The converged study's JSON files of ``results_dir``: mode -> its results, in seed order."""
    groups: dict[str, list[dict]] = {}
    for path in sorted(results_dir.glob("*-s*.json")) if results_dir.exists() else []:
        result = json.loads(path.read_text(encoding="utf-8"))
        groups.setdefault(result["mode"], []).append(result)
    return {m: sorted(groups[m], key=lambda r: r["seed"]) for m in MODES if m in groups}


def write_report(docs: Path = REPORT.parent, study: Study | None = None) -> Path:
    """``docs/results.md`` and its figures (``docs/img``) from the committed results (``study``'s results
    directory in place of its default, for runs elsewhere)."""
    from report_multi30k import build_report  # experiments/report_multi30k.py
    from report_transformer import transformer_section  # experiments/report_transformer.py
    from report_vqa import vqa_section  # experiments/report_vqa.py

    results = ROOT / "experiments" / "results"
    dirs = {name: s.results for name, s in STUDIES.items()}
    if study is not None:
        dirs[study.name] = study.results
    converged = STUDIES["converged"]
    arrival = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((results / "relaxed-arrival").glob("*.json"))]
    report = docs / REPORT.name
    text = build_report(load_groups(dirs["converged"]), load_results(dirs["early"]), MODES, docs / IMG.name, docs,
                        planned={m: len(converged.seeds_of(m)) for m in MODES},
                        longer=load_results(results / "multi30k-5epochs"),
                        iwslt=load_results(results / "iwslt-valid"), arrival=arrival,
                        vqa=vqa_section(results / "vqa", docs / IMG.name, docs),
                        transformer=transformer_section(
                            dirs["transformer"], load_groups(dirs["converged"]), docs / IMG.name, docs,
                            [json.loads(p.read_text(encoding="utf-8"))
                             for p in sorted((dirs["transformer"] / "progress").glob("*.json"))]),
                        progress=[json.loads(p.read_text(encoding="utf-8"))
                                  for p in sorted((dirs["converged"] / "progress").glob("*.json"))])
    report.write_text(text, encoding="utf-8")
    log(f"wrote {report}")
    return report


def snapshot(work: Path, study: Study) -> list[Path]:
    """``RESULTS/progress/NAME.json`` for every run in ``work`` without a final result: its curve so far.

    Run directories are not committed; these small files are, so the report can say where an unfinished
    run stands and a later session on another machine knows what was reached.
    """
    out = []
    progress = study.results / "progress"
    for run_dir in sorted((work / "runs").glob("*")) if (work / "runs").is_dir() else []:
        if (study.results / f"{run_dir.name}.json").exists() or not (run_dir / "run.json").exists():
            (progress / f"{run_dir.name}.json").unlink(missing_ok=True)
            continue
        points = curve(run_dir)
        if not points:
            continue
        config = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["config"]
        result = {"run": run_dir.name, "mode": config["mode"], "seed": config["seed"], "curve": points,
                  "epochs_done": points[-1]["epoch"], "best_valid_ppl": min(valid_metric(p) for p in points),
                  "train_wall_s": round(points[-1]["wall_s"], 1), **provenance(config.get("threads") or 1)}
        out.append(write_result(progress, run_dir.name, result))
    return out


def parse_jobs(specs: list[str], study: Study) -> list[tuple[str, int]]:
    """``MODE`` (every seed of the study for it) or ``MODE:SEED``, in the order given; a bad one: SystemExit."""
    jobs = []
    for spec in specs:
        mode, _, seed = spec.partition(":")
        if mode not in study.modes:
            raise SystemExit(f"unknown mode {mode!r} in --modes (choose from {', '.join(study.modes)})")
        if seed and not seed.isdigit():
            raise SystemExit(f"bad seed in --modes {spec!r}: MODE or MODE:SEED, e.g. soft:2")
        jobs += [(mode, int(seed))] if seed else [(mode, s) for s in study.seeds_of(mode)]
    return jobs


def default_jobs(study: Study) -> list[tuple[str, int]]:
    """Every mode's first seed in ``MODES`` order, then the further seeds of the modes that have them."""
    first = [(mode, study.seeds_of(mode)[0]) for mode in study.modes]
    rest = [(mode, seed) for k in range(1, 10) for mode in study.modes if len(study.seeds_of(mode)) > k
            for seed in [study.seeds_of(mode)[k]]]
    return first + rest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/multi30k"),
                   help="Multi30k directory with task1/tok (default data/multi30k: `varattn prepare multi30k`)")
    p.add_argument("--study", choices=sorted(STUDIES), default="converged",
                   help="converged (default): each mode until validation stops improving, capped; early: the "
                        "3-epoch budget of the early-learning table")
    p.add_argument("--work", type=Path, help="run directories and segmented data (default runs/multi30k-STUDY)")
    p.add_argument("--modes", nargs="+", help="MODE (all its seeds) or MODE:SEED, in this order (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of every training/evaluation process")
    p.add_argument("--device", default="cpu",
                   help="where every run trains and is evaluated: cpu (default), cuda or cuda:N (a GPU: the same "
                        "config and seeds; the result's machine record names the GPU)")
    p.add_argument("--report", action="store_true", help="only rebuild docs/results.md from the committed JSON files")
    p.add_argument("--no-report", action="store_true", help="do not rebuild docs/results.md after each mode")
    p.add_argument("--docs", type=Path, default=REPORT.parent, help="where results.md and img/ go (default docs/)")
    p.add_argument("--results", type=Path, help="where the per-mode JSON files go (default: the study's)")
    p.add_argument("--segment-steps", type=int, help="updates between validations (smoke tests; default: the study's)")
    p.add_argument("--max-epochs", type=int, help="the cap in epochs (smoke tests; default: the study's)")
    p.add_argument("--patience", type=int, help="segments without improvement that stop a mode (smoke tests)")
    p.add_argument("--snapshot", action="store_true",
                   help="only write RESULTS/progress/*.json: the curves so far of the unfinished runs in --work")
    p.add_argument("--evaluate-mode", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    study = STUDIES[args.study]
    changes = {"results": args.results.resolve() if args.results else None, "segment_steps": args.segment_steps,
               "max_epochs": args.max_epochs, "patience": args.patience}
    study = replace(study, **{k: v for k, v in changes.items() if v is not None})
    if args.report:
        write_report(args.docs.resolve(), study)
        return 0
    work = (args.work or Path(f"runs/multi30k-{study.name}")).resolve()
    if args.snapshot:
        for path in snapshot(work, study):
            log(f"wrote {path}")
        return 0
    if not (args.data / "task1" / "tok").is_dir():
        p.error(f"no Multi30k data in {args.data} (no task1/tok): run `varattn prepare multi30k {args.data}` or "
                "give --data")
    if args.evaluate_mode:
        print(json.dumps(evaluate_mode(args.evaluate_mode, args.data.resolve(), work, args.threads, args.device)))
        return 0
    jobs = parse_jobs(args.modes, study) if args.modes else default_jobs(study)
    data_dir = prepare_data(args.data.resolve(), work)
    for mode, seed in jobs:
        name = study.job_name(mode, seed)
        if (study.results / f"{name}.json").exists():
            log(f"{name}: results exist, skipped")
            continue
        t0 = time.monotonic()
        try:
            train_mode(mode, seed, data_dir, work, args.threads, study, args.device)
            path = finish_mode(mode, seed, args.data.resolve(), work, args.threads, study, args.device)
        except RuntimeError as exc:  # one failing mode must not stop the others
            log(f"{name}: FAILED, going on with the next mode\n{exc}")
            continue
        log(f"{name}: wrote {path} ({(time.monotonic() - t0) / 60:.1f} min)")
        if not args.no_report:
            try:
                write_report(args.docs.resolve(), study)
            except Exception as exc:  # the report must never stop the study
                log(f"report failed: {exc!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
