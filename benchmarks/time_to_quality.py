"""Time to quality on Multi30k: validation perplexity against training time, varattn against OpenNMT-py 3.5.1.

    python benchmarks/time_to_quality.py [--systems onmt-soft,soft,var-sample] [--minutes 12] [--eval-every 150]
                                         [--threads N] [--work runs/multi30k-converged] [--data data/multi30k]
                                         [--workdir /tmp/ttq-bench] [--out PATH] [--figure PATH] [--json]
                                         [--markdown PATH] [--skip-onmt] [--max-updates N] [--set KEY=VALUE]

**Data.** The Multi30k study's own files (``experiments/multi30k.py``): ``WORK/data/{train,val}.{de,en}``,
lowercased, Moses-tokenised and segmented with the study's joint BPE. When ``WORK/data`` lacks them, they are
made there from ``--data`` (``task1/tok``) by the study's ``prepare_data``. Every system trains on ``train``
(pairs with more than ``max_len`` = 50 tokens on a side left out, as in the study) and validates on all of
``val`` (1,014 pairs, none longer than 50 tokens).

**Systems**, one after another, each in its own process with ``--threads`` torch threads (``OMP_NUM_THREADS``
and ``MKL_NUM_THREADS`` too; default: all cores):

* ``onmt-soft``: OpenNMT-py 3.5.1 (installed into ``--venv`` as ``benchmarks/opennmt_compare.py`` does),
  ``onmt_build_vocab`` then ``onmt_train`` with the config :func:`onmt_config` writes;
* any varattn mode (``soft``, ``var-sample``, ...): the real training loop, ``varattn train``'s path
  (``TaskSpec.trainer`` -> ``varattn.training.start`` -> ``Trainer.train``) with the study's config
  ``experiments/multi30k.yaml``, ``--mode`` set, plus :func:`matching_sets` and any ``--set``.

**Sizes**, matched parameter for parameter: embeddings 96, a one-layer bidirectional LSTM encoder of 96 per
direction (OpenNMT-py ``brnn`` with ``hidden_size`` 192), a one-layer LSTM decoder of 192 fed a 192-wide
vector back (OpenNMT-py input feeding: the attentional vector; ours: the context), MLP attention
projecting to 192 (OpenNMT-py's projects to the decoder size; ours therefore ``model.attention_dim=192``),
an output layer of 192 (OpenNMT-py: ``linear_out([c ; h])``, no tanh for MLP attention; ours
``tanh(W [h ; c] + b)``), then the softmax. Both vocabularies are every type of the filtered ``train`` split
and four specials (OpenNMT-py ``vocab_size_multiple 1``), so a ``val`` type unseen in ``train`` is unknown
to both. The one residual difference in the count is OpenNMT-py's bias on the attention's query
projection (192 parameters); ``var-sample`` adds its inference network. Both record their counts. Not
matched (each system's own design): OpenNMT-py starts its decoder from the encoder's final states, ours
from zeros; the vector fed back and the output layer's tanh, as said.

**Optimisation**, the same on both sides: batches of 32 sentences, the loss summed over a batch and
divided by its sentences, Adam (0.9, 0.999, eps 1e-8) at 0.001, gradient norm clipped at 5, dropout 0.3,
uniform initialisation in +-0.1, seed 1. OpenNMT-py's learning rate stays constant
(``learning_rate_decay 1``); ours halves it only after an epoch whose validation is worse than the best
earlier epoch's (the study's rule), which the JSON records (``lr`` of every validation). OpenNMT-py reads
its training data in buckets of one pass over ``train`` (``bucket_size`` = its non-empty lines, where the
default would read nine passes before the first step), sorted by length, batched and shuffled, in the
training process (``num_workers 0``), like ours, which draws length-bucketed batches in random order.

**What is timed.** Only training. Each system trains for ``--minutes`` of training time, validating every
``--eval-every`` updates, and stops at the first validation at which its training clock has passed the
budget (so both end on a validation; the training time can pass the budget by up to one interval):

* ours: the clock starts when ``Trainer.train`` is called (data read, vocabularies built, model made:
  before it) and runs on ``time.perf_counter``; every call of ``Trainer.validate`` is timed (scoring ``val``,
  the metrics record, the ``best/``, ``last/`` and ``resume/`` checkpoints it writes) and its seconds are
  taken off the clock. The mid-training ``resume/`` saves are off (``save_every=0``): OpenNMT-py saves
  nothing within the budget either. The validations are the trainer's own: every ``eval_every`` updates
  and at the end of every epoch. The stop: at the first validation past the budget ``cfg.max_steps`` is
  set to the current step, so the loop ends there without another validation (not ``max_minutes``: its
  deadline counts validation time).
* OpenNMT-py: from the time stamps of its log (milliseconds). The clock starts at its ``Start training
  loop`` line (vocabularies and model made before it; its reading of each bucket of training data comes
  after it and counts, as our building of each epoch's batches does); a validation runs from the ``Step N``
  report line of the step it follows (``report_every`` is chosen to divide ``valid_steps``) to its
  ``Validation accuracy`` line, and those seconds are taken off the clock (without a ``Step N`` line, the
  ``valid stats calculation took`` figure is used). The stop: the process is sent SIGTERM after the lines of
  the first validation past the budget; nothing after it is used.

**Measures.** Validation perplexity per target token, end-of-sentence tokens included, over all of
``val``: ours the trainer's exact perplexity (for ``var-sample`` the exact marginal ``log p(y | x)``, not
the ELBO), OpenNMT-py its ``Validation perplexity`` (the exponentiated mean token cross-entropy, no label
smoothing). Target tokens/s: target tokens trained (EOS included) up to the last validation over the
training seconds to it (OpenNMT-py's counted from each report line's average batch, times the window's
steps). The target perplexity is the lowest every system reached (the largest of the systems' best
perplexities); a system's time to it is the first crossing of its curve, interpolated linearly in log
perplexity between the validation before and the one at the crossing.

**Output.** JSON (``--json`` prints it; always written to ``--out``, default ``WORKDIR/time_to_quality.json``),
the markdown table (printed; written into PATH between the ``time_to_quality.py`` markers only with
``--markdown PATH``) and the figure (validation perplexity against training minutes, log scale; to
``--figure``, default ``WORKDIR/time_to_quality.png``, or ``img/time_to_quality.png`` beside the markdown
file with ``--markdown``). Without ``--markdown`` nothing in ``docs/`` is touched. Run directories, OpenNMT-py's
files and logs go under ``--workdir`` (default ``/tmp/ttq-bench``), never into the repository.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "experiments"))
import multi30k  # noqa: E402  (experiments/multi30k.py: the study's data, configuration and child environment)
import opennmt_compare  # noqa: E402  (benchmarks/opennmt_compare.py: OpenNMT-py's installation and launcher)
import speed  # noqa: E402  (benchmarks/speed.py: machine description, markdown helpers)

#: the marker name of this script's table in the docs
TABLE = "time_to_quality.py"
#: the OpenNMT-py system's name in --systems
ONMT = "onmt-soft"
DEFAULT_SYSTEMS = f"{ONMT},soft,var-sample"
DEFAULT_WORK = Path("runs", "multi30k-converged")
FIGURE_NAME = "time_to_quality.png"
#: the study's split names (``experiments/multi30k.py``)
TRAIN, VALID = "train", "val"
#: an OpenNMT-py log line: ``[2026-12-07 06:30:01,123 INFO] message``
LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) [A-Z]+\] (.*)$")
STEP_LINE = re.compile(r"^Step\s+(\d+)(?:/\s*\d+)?;.*?bsz:\s*(\d+)/\s*(\d+)/\s*(\d+);")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- data and configuration --------------------------------------------------------------------------
def segmented_data(work: Path, data: Path) -> Path:
    """``WORK/data`` with the study's segmented ``train`` and ``val`` files, made by the study's own
    ``prepare_data`` from ``data`` (``task1/tok``) when they are missing."""
    out = work / "data"
    if all((out / f"{split}.{lang}").is_file() for split in (TRAIN, VALID) for lang in ("de", "en")):
        return out
    if not (data / "task1" / "tok").is_dir():
        raise SystemExit(f"no segmented Multi30k in {out} and no Multi30k data in {data} (no task1/tok): run "
                         f"`varattn prepare multi30k {data}` or give --work/--data")
    return multi30k.prepare_data(data.resolve(), work.resolve())


def matching_sets(decoder_hidden: int) -> list[str]:
    """What the study's config needs to have OpenNMT-py's sizes: attention projected to the decoder's size (as
    OpenNMT-py's MLP attention does), and no ``resume/`` saves inside the timed training."""
    return [f"model.attention_dim={decoder_hidden}", "save_every=0"]


def our_config(system: str, data: Path, sets: list[str], eval_every: int, threads: int, max_updates: int | None):
    """The study's config for ``system`` (a varattn mode) with the matching changes and ``sets`` applied."""
    import yaml

    from varattn import register_shipped_tasks
    from varattn.training.registry import get_task

    register_shipped_tasks()
    hidden = yaml.safe_load(multi30k.CONFIG.read_text(encoding="utf-8"))["model"]["decoder_hidden"]
    overrides = {"mode": system, "eval_every": eval_every, "threads": threads, "device": "cpu",
                 "train": str(data / TRAIN), "valid": str(data / VALID), "src_lang": "de", "tgt_lang": "en",
                 "max_steps": max_updates}
    return get_task("nmt").load_config(str(multi30k.CONFIG), overrides, [*matching_sets(hidden), *sets])


def check_matchable(cfg) -> None:
    """OpenNMT-py's RNN model has one width: the decoder, the encoder's output, the attention and the output layer."""
    m = cfg.model
    widths = {"model.decoder_hidden": m.decoder_hidden, "2 x model.encoder_hidden": 2 * m.encoder_hidden,
              "model.attention_dim": m.attention_dim, "model.output_hidden": m.output_hidden}
    if len(set(widths.values())) != 1 or m.encoder_layers != m.decoder_layers:
        raise SystemExit(f"OpenNMT-py cannot match these sizes: {widths}, layers {m.encoder_layers}/"
                         f"{m.decoder_layers} (all widths must be equal, the layer counts too)")


# -- OpenNMT-py ----------------------------------------------------------------------------------------
def report_every_for(eval_every: int, most: int = 25) -> int:
    """OpenNMT-py's ``report_every``: the largest divisor of ``eval_every`` up to ``most``, so that every
    validation follows a report line (the start of the validation in the log)."""
    return max(d for d in range(1, min(most, eval_every) + 1) if eval_every % d == 0)


def non_empty_pairs(prefix: Path) -> int:
    """Lines of ``PREFIX.de``/``PREFIX.en`` with text on both sides: what OpenNMT-py's reader counts."""
    src = (prefix.parent / f"{prefix.name}.de").read_text(encoding="utf-8").splitlines()
    tgt = (prefix.parent / f"{prefix.name}.en").read_text(encoding="utf-8").splitlines()
    return sum(1 for s, t in zip(src, tgt) if s.split() and t.split())


def onmt_config(run_dir: Path, data: Path, cfg, eval_every: int, max_updates: int | None) -> Path:
    """OpenNMT-py's YAML config: the sizes and optimisation of our ``cfg`` (see the module docstring)."""
    m = cfg.model
    steps = max_updates if max_updates else 10**8
    text = f"""# written by benchmarks/time_to_quality.py
save_data: {run_dir}/run
src_vocab: {run_dir}/vocab.src
tgt_vocab: {run_dir}/vocab.tgt
src_vocab_size: 10000000
tgt_vocab_size: 10000000
vocab_size_multiple: 1
overwrite: true
data:
    corpus_1:
        path_src: {data}/{TRAIN}.de
        path_tgt: {data}/{TRAIN}.en
        transforms: [filtertoolong]
    valid:
        path_src: {data}/{VALID}.de
        path_tgt: {data}/{VALID}.en
src_seq_length: {cfg.max_len}
tgt_seq_length: {cfg.max_len}
bucket_size: {non_empty_pairs(data / TRAIN)}
save_model: {run_dir}/model
save_checkpoint_steps: 1000000000
train_steps: {steps}
valid_steps: {eval_every}
report_every: {report_every_for(eval_every)}
seed: {cfg.seed}
num_workers: 0
world_size: 1
gpu_ranks: []
model_type: text
encoder_type: brnn
decoder_type: rnn
rnn_type: LSTM
layers: {m.encoder_layers}
hidden_size: {m.decoder_hidden}
word_vec_size: {m.embed_dim}
global_attention: mlp
input_feed: 1
dropout: {m.dropout}
param_init: {m.init_range}
batch_type: sents
batch_size: {cfg.batch_size}
valid_batch_size: {cfg.valid_batch_size}
normalization: sents
optim: adam
adam_beta1: 0.9
adam_beta2: 0.999
learning_rate: {cfg.lr}
learning_rate_decay: 1.0
start_decay_steps: 1000000000
max_grad_norm: {cfg.clip}
"""
    path = run_dir / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _stamp(text: str) -> float:
    """Seconds of an OpenNMT-py time stamp (``2026-12-07 06:30:01,123``) on the local clock's scale."""
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_onmt_log(text: str, valid_steps: int) -> dict:
    """The training curve in an OpenNMT-py 3.5 training log (see the module docstring for the clock).

    Returns ``params`` (its ``number of parameters``), ``src_vocab``/``tgt_vocab``, ``points`` (one per
    validation: ``step``, ``train_s`` (training seconds before it, validations excluded), ``valid_s``,
    ``ppl``, ``accuracy``, ``tokens`` (target tokens trained up to its step)) and ``last_step`` (the last report
    line's). The ``k``-th validation is at step ``k * valid_steps``.
    """
    out: dict = {"params": None, "src_vocab": None, "tgt_vocab": None, "points": [], "last_step": 0}
    start, excluded, tokens = None, 0.0, 0.0
    step_stamps: dict[int, tuple[float, float]] = {}  # step -> (time stamp, target tokens up to it)
    took, ppl, prev_step = None, None, 0
    lines = text.splitlines()
    for k, line in enumerate(lines):
        m = LOG_LINE.match(line)
        if not m:
            continue
        stamp, msg = _stamp(m.group(1)), m.group(2)
        if msg.startswith("Start training loop"):
            start = stamp
        elif (hit := re.search(r"\* number of parameters: (\d+)", msg)) is not None:
            out["params"] = int(hit.group(1))
        elif (hit := re.search(r"\* (src|tgt) vocab size = (\d+)", msg)) is not None:
            out[f"{hit.group(1)}_vocab"] = int(hit.group(2))
        elif (hit := STEP_LINE.match(msg)) is not None:
            step = int(hit.group(1))
            tokens += int(hit.group(3)) * (step - prev_step)
            prev_step, out["last_step"] = step, step
            step_stamps[step] = (stamp, tokens)
        elif msg.startswith("valid stats calculation"):
            rest = msg + " " + (lines[k + 1] if k + 1 < len(lines) else "")
            hit = re.search(r"took:\s*([\d.eE+-]+)\s*s", rest)
            took = (stamp, float(hit.group(1))) if hit else None
        elif msg.startswith("Validation perplexity:"):
            ppl = float(msg.split(":", 1)[1])
        elif msg.startswith("Validation accuracy:") and start is not None and ppl is not None:
            step = valid_steps * (len(out["points"]) + 1)
            if step in step_stamps:
                begin, trained = step_stamps[step]
            else:  # no report line at the validated step: the validation's own timing
                begin, trained = (took[0] - took[1] if took else stamp), tokens
            out["points"].append({"step": step, "train_s": round(begin - start - excluded, 3),
                                  "valid_s": round(stamp - begin, 3), "ppl": ppl,
                                  "accuracy": float(msg.split(":", 1)[1]), "tokens": trained})
            excluded += stamp - begin
            took, ppl = None, None
    return out


def past_budget(point: dict, budget_s: float, max_updates: int | None) -> bool:
    """Whether training stops at this validation: its training seconds reach the budget, or its step ``max_updates``."""
    return point["train_s"] >= budget_s or bool(max_updates and point["step"] >= max_updates)


def cut_at_budget(points: list[dict], budget_s: float, max_updates: int | None) -> list[dict]:
    """``points`` up to the first validation :func:`past_budget` (all of them when none is)."""
    for k, p in enumerate(points):
        if past_budget(p, budget_s, max_updates):
            return points[: k + 1]
    return points


def run_onmt(venv: Path, run_dir: Path, data: Path, cfg, args, budget_s: float) -> dict:
    """Build OpenNMT-py's vocabularies, train it until the first validation past the budget, parse its log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    config = onmt_config(run_dir, data, cfg, args.eval_every, args.max_updates)
    r = subprocess.run(opennmt_compare.onmt_bin(venv, "build_vocab") + ["-config", str(config), "-n_sample", "-1"],
                       capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"onmt_build_vocab failed: {r.stderr[-800:]}")
    started = time.monotonic()
    proc = subprocess.Popen(opennmt_compare.onmt_bin(venv, "train") + ["-config", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    guard = threading.Timer(3 * budget_s + 1800, proc.kill)  # a run that never validates again
    guard.start()
    lines, stopped = [], False
    try:
        with open(run_dir / "train.log", "w", encoding="utf-8") as written:
            for line in proc.stdout:
                lines.append(line)
                written.write(line)
                written.flush()
                if not stopped and "Validation accuracy:" in line:
                    points = parse_onmt_log("".join(lines), args.eval_every)["points"]
                    if points and past_budget(points[-1], budget_s, args.max_updates):
                        stopped = True  # the first validation past the budget: nothing after it is used
                        proc.terminate()
                    if points:
                        p = points[-1]
                        log(f"  step {p['step']}: valid ppl {p['ppl']:.3f} after {p['train_s'] / 60:.2f} training min")
        proc.wait(timeout=60)
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines)
    if proc.returncode and not stopped:
        raise RuntimeError(f"onmt_train failed ({proc.returncode}): {text[-1500:]}")
    parsed = parse_onmt_log(text, args.eval_every)
    parsed["points"] = cut_at_budget(parsed["points"], budget_s, args.max_updates)
    parsed["wall_s"] = round(time.monotonic() - started, 1)
    parsed["log"] = str(run_dir / "train.log")
    parsed["config"] = str(config)
    return parsed


# -- ours ------------------------------------------------------------------------------------------------
class TrainingClock:
    """Seconds of training: time since :meth:`start` less the time spent in validations (:meth:`exclude`)."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.excluded = 0.0

    def start(self) -> None:
        self.started = time.perf_counter()

    def seconds(self, now: float | None = None) -> float:
        return (time.perf_counter() if now is None else now) - self.started - self.excluded

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds


def instrument(trainer, clock: TrainingClock, budget_s: float) -> list[dict]:
    """Time ``trainer``'s validations and count its target tokens (its own methods, wrapped on the instance);
    at the first validation past ``budget_s`` training seconds, end the run there. Returns the list the
    validations are recorded in."""
    validate, update = trainer.validate, trainer.update
    points: list[dict] = []
    tokens = [0.0]

    def counted_update(batch, weight: float = 1.0, stop: bool = False):
        figures = update(batch, weight, stop)
        if figures is not None:
            tokens[0] += figures["tokens"]
        return figures

    def timed_validate(epoch_end: bool = False) -> dict:
        begin = time.perf_counter()
        train_s = clock.seconds(begin)
        record = validate(epoch_end)
        valid_s = time.perf_counter() - begin
        clock.exclude(valid_s)
        points.append({"step": trainer.state.step, "train_s": round(train_s, 3), "valid_s": round(valid_s, 3),
                       "ppl": record["ppl"], "elbo_ppl": record.get("elbo_ppl"), "tokens": tokens[0],
                       "valid_tokens": record.get("tokens"), "lr": record["lr"], "epoch_end": epoch_end})
        log(f"  step {trainer.state.step}: valid ppl {record['ppl']:.3f} after {train_s / 60:.2f} training min")
        if train_s >= budget_s:
            trainer.cfg.max_steps = trainer.state.step  # the loop's own limit: it ends here, validated
        return record

    trainer.update, trainer.validate = counted_update, timed_validate
    return points


def run_ours(system: str, data: Path, run_dir: Path, args, budget_s: float) -> dict:
    """Train ``system`` (a varattn mode) with the real loop until the first validation past the budget."""
    from varattn import register_shipped_tasks
    from varattn.training.registry import get_task

    register_shipped_tasks()
    cfg = our_config(system, data, args.set, args.eval_every, args.threads, args.max_updates)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    trainer = get_task("nmt").trainer(cfg, run_dir, progress=False, tensorboard=False)
    setup_s = time.perf_counter() - t0
    clock = TrainingClock()
    points = instrument(trainer, clock, budget_s)
    clock.start()
    trainer.train()
    model = trainer.task.model_cfg
    return {"params": sum(p.numel() for p in trainer.model.parameters()), "src_vocab": model.src_vocab_size,
            "tgt_vocab": model.tgt_vocab_size, "points": points, "setup_s": round(setup_s, 1),
            "config": cfg.to_dict(), "run_dir": str(run_dir)}


def spawn_ours(system: str, work: Path, run_dir: Path, args, budget_s: float) -> dict:
    """:func:`run_ours` in a process of its own (``--worker``), so that no system inherits another's state."""
    out = run_dir.parent / f"{run_dir.name}.worker.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", system, "--worker-out", str(out),
           "--work", str(work), "--minutes", repr(args.minutes), "--eval-every", str(args.eval_every),
           "--threads", str(args.threads), "--workdir", str(args.workdir)]
    cmd += ["--max-updates", str(args.max_updates)] if args.max_updates else []
    cmd += [f"--set={s}" for s in args.set]
    started = time.monotonic()
    proc = subprocess.run(cmd, env=multi30k.child_env(args.threads), stdout=subprocess.PIPE,
                          stderr=None, text=True, timeout=3 * budget_s + 1800)
    if proc.returncode or not out.is_file():
        raise RuntimeError(f"varattn {system} failed ({proc.returncode}); see its messages above")
    result = json.loads(out.read_text(encoding="utf-8"))
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


# -- the analysis ----------------------------------------------------------------------------------------
def time_to_target(points: list[dict], target: float) -> float | None:
    """Training seconds at which the curve first reaches ``target``, interpolated linearly in log perplexity
    between the validation before the crossing and the one at it (the first one's own time when it is already
    there); None when it never does."""
    prev = None
    for p in points:
        if p["ppl"] <= target:
            if prev is None or prev["ppl"] == p["ppl"]:
                return p["train_s"]
            frac = (math.log(prev["ppl"]) - math.log(target)) / (math.log(prev["ppl"]) - math.log(p["ppl"]))
            return prev["train_s"] + frac * (p["train_s"] - prev["train_s"])
        prev = p
    return None


def summarize(name: str, result: dict) -> dict:
    """A system's figures within the budget from its points: updates, training seconds, tokens/s, best ppl."""
    points = result.get("points") or []
    if not points:
        return result
    last = points[-1]
    best = min(points, key=lambda p: p["ppl"])
    return {**result, "updates": last["step"], "train_s": last["train_s"],
            "valid_s": round(sum(p["valid_s"] for p in points), 1),
            "tokens_per_s": last["tokens"] / last["train_s"] if last["train_s"] > 0 else None,
            "best_ppl": best["ppl"], "best_step": best["step"],
            "lr_changed_at": next((p["step"] for p in points if p.get("lr") not in (None, points[0].get("lr"))), None)}


def analyse(report: dict) -> None:
    """Add the target perplexity (the lowest every system reached) and each system's time to it."""
    done = {name: r for name, r in report["systems"].items() if r.get("points")}
    report["target_ppl"] = max((r["best_ppl"] for r in done.values()), default=None)
    for r in done.values():
        r["time_to_target_s"] = time_to_target(r["points"], report["target_ppl"])
    reference = report["systems"].get(ONMT, {}).get("time_to_target_s")
    for r in done.values():
        t = r.get("time_to_target_s")
        r["ratio_to_onmt"] = t / reference if t is not None and reference else None


# -- the report ------------------------------------------------------------------------------------------
def label(name: str) -> str:
    return f"OpenNMT-py {opennmt_compare.ONMT_VERSION} soft" if name == ONMT else f"varattn {name}"


def _minutes(seconds: float | None, digits: int = 2) -> str:
    return "-" if seconds is None else f"{seconds / 60:.{digits}f}"


def markdown(report: dict, figure_link: str | None = None) -> str:
    """The table: per system its parameters, updates and training minutes, tokens/s, best perplexity, time to
    the target perplexity and its ratio to OpenNMT-py's; then the figure's link and notes."""
    mach, s = report["machine"], report["settings"]
    target = report.get("target_ppl")
    lines = [
        f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['threads']} threads, torch {mach['torch']}, "
        f"{mach['date']} (1-min load average at start {speed._fmt(mach['load_average'], 2)}); "
        f"OpenNMT-py {opennmt_compare.ONMT_VERSION}.",
        "",
        f"Multi30k de-en, the study's joint BPE; {s['minutes']:g} training minutes per system"
        + (f" (at most {s['max_updates']} updates)" if s.get("max_updates") else "") + "; validation on all of "
        f"`val` every {s['eval_every']} updates (and, for varattn, at every epoch's end), excluded from the clock. "
        f"Target perplexity {speed._fmt(target, 2)}: the lowest every system reached.",
        "",
        f"| system | parameters | updates | training minutes | target tokens/s | best validation perplexity "
        f"| minutes to perplexity {speed._fmt(target, 2)} | time / OpenNMT-py's |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for name, r in report["systems"].items():
        if not r.get("points"):
            lines.append(f"| {label(name)} | {r.get('error') or 'no validation'} | | | | | | |")
            continue
        params = f"{r['params']:,}" if r.get("params") else "-"
        lines.append(f"| {label(name)} | {params} | {r['updates']} | {_minutes(r['train_s'])} "
                     f"| {speed._fmt(r['tokens_per_s'], 0)} | {r['best_ppl']:.2f} "
                     f"| {_minutes(r.get('time_to_target_s'))} | {speed._fmt(r.get('ratio_to_onmt'), 2)} |")
        if r.get("lr_changed_at"):
            notes.append(f"{label(name)}: the learning rate was halved at step {r['lr_changed_at']} (an epoch's "
                         "validation worse than the best earlier one's).")
    onmt, soft = report["systems"].get(ONMT, {}), report["systems"].get("soft", {})
    if onmt.get("params") and soft.get("params"):
        diff = onmt["params"] - soft["params"]
        notes.append(f"Parameters: OpenNMT-py {onmt['params']:,}, varattn soft {soft['params']:,} "
                     f"(difference {diff:+,}, {100 * diff / onmt['params']:+.3f} %).")
    if report.get("onmt_error"):
        notes.append(f"OpenNMT-py was not run: {report['onmt_error']}")
    if figure_link:
        lines += ["", f"![validation perplexity against training minutes]({figure_link})"]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def plot_curves(report: dict, path: Path) -> None:
    """Validation perplexity (log scale) against training minutes, one line per system, the target dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, r in report["systems"].items():
        points = r.get("points") or []
        if points:
            ax.plot([p["train_s"] / 60 for p in points], [p["ppl"] for p in points], marker="o", markersize=3,
                    label=label(name))
    if report.get("target_ppl"):
        ax.axhline(report["target_ppl"], color="grey", linestyle="--", linewidth=0.8,
                   label=f"target {report['target_ppl']:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("training minutes (validation excluded)")
    ax.set_ylabel("validation perplexity (Multi30k val)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the command line ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", default=DEFAULT_SYSTEMS,
                   help=f"comma-separated, in order: {ONMT} (OpenNMT-py) and varattn modes (default {DEFAULT_SYSTEMS})")
    p.add_argument("--minutes", type=float, default=12.0, help="training minutes per system (default 12)")
    p.add_argument("--eval-every", type=int, default=150,
                   help="updates between validations (default 150, about a sixth of an epoch)")
    p.add_argument("--max-updates", type=int, default=None, help="also stop at this many updates (smoke runs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of every system (default: all cores)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK,
                   help=f"the study's work directory, with data/{{train,val}}.{{de,en}} (default {DEFAULT_WORK})")
    p.add_argument("--data", type=Path, default=Path("data", "multi30k"),
                   help="Multi30k with task1/tok, segmented into WORK/data when that lacks the files "
                        "(default data/multi30k)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/ttq-bench"),
                   help="run directories, OpenNMT-py's files and logs (default /tmp/ttq-bench)")
    p.add_argument("--venv", type=Path, default=Path("/tmp/onmt-venv"), help="OpenNMT-py's virtual environment")
    p.add_argument("--skip-onmt", action="store_true", help="run only varattn's systems")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for varattn's systems (after the study's config and the matching sizes)")
    p.add_argument("--out", type=Path, default=None, help="the JSON report (default WORKDIR/time_to_quality.json)")
    p.add_argument("--figure", type=Path, default=None,
                   help=f"the figure (default WORKDIR/{FIGURE_NAME}; with --markdown: img/{FIGURE_NAME} beside it)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--markdown", default=None, metavar="PATH",
                   help="also (re)write this script's table in PATH (the record: docs/benchmarks.md); by default "
                        "no docs are touched")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    return p


def run_system(name: str, work: Path, data: Path, cfg, args, report: dict) -> dict:
    """One system's result (its points and figures), or ``{"error": ...}``."""
    budget_s = 60 * args.minutes
    if name == ONMT:
        if report["onmt_error"]:
            return {"error": report["onmt_error"]}
        run_dir = args.workdir / ONMT
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        try:
            return run_onmt(args.venv, run_dir, data, cfg, args, budget_s)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            report["onmt_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            (args.workdir / "onmt-error.txt").write_text(str(exc), encoding="utf-8")
            return {"error": report["onmt_error"]}
    try:
        return spawn_ours(name, work, args.workdir / f"varattn-{name}", args, budget_s)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.threads = args.threads or os.cpu_count() or 1
    args.workdir = args.workdir.resolve()
    if args.worker:  # one varattn system, in its own process (spawn_ours)
        data = segmented_data(args.work, args.data)
        result = run_ours(args.worker, data, args.workdir / f"varattn-{args.worker}", args, 60 * args.minutes)
        args.worker_out.write_text(json.dumps(result), encoding="utf-8")
        return 0
    from varattn.errors import VarattnError
    from varattn.latent import mode_names

    if args.eval_every < 1 or args.minutes <= 0 or (args.max_updates is not None and args.max_updates < 1):
        parser.error("--eval-every and --max-updates must be positive integers, --minutes a positive number")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s != ONMT and s not in mode_names()]
    if unknown:
        parser.error(f"unknown systems {', '.join(unknown)} (choose {ONMT} or varattn modes: "
                     f"{', '.join(mode_names())})")
    work = args.work.resolve()
    data = segmented_data(work, args.data)
    try:
        cfg = our_config("soft", data, args.set, args.eval_every, args.threads, args.max_updates)
    except VarattnError as exc:
        parser.error(str(exc))
    if ONMT in systems:
        check_matchable(cfg)
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = (args.out or args.workdir / "time_to_quality.json").resolve()
    if args.figure is not None:
        figure = args.figure.resolve()
    elif args.markdown not in (None, "-"):
        figure = Path(args.markdown).resolve().parent / "img" / FIGURE_NAME
    else:
        figure = args.workdir / FIGURE_NAME
    report: dict = {
        "script": TABLE, "machine": speed.machine(args.threads), "onmt_error": None, "systems": {},
        "settings": {"minutes": args.minutes, "eval_every": args.eval_every, "max_updates": args.max_updates,
                     "threads": args.threads, "systems": systems, "data": str(data),
                     "config": str(multi30k.CONFIG.relative_to(REPO)),
                     "sets": [*matching_sets(cfg.model.decoder_hidden), *args.set],
                     "onmt_version": opennmt_compare.ONMT_VERSION, "report_every": report_every_for(args.eval_every)},
    }
    if ONMT in systems:
        report["onmt_error"] = "skipped (--skip-onmt)" if args.skip_onmt else opennmt_compare.install(args.venv)
        if report["onmt_error"]:
            log(f"OpenNMT-py: {report['onmt_error'].splitlines()[0]}")
    for name in systems:
        log(f"{label(name)}: training for {args.minutes:g} minutes")
        result = summarize(name, run_system(name, work, data, cfg, args, report))
        report["systems"][name] = result
        if result.get("error"):
            log(f"{label(name)}: {result['error'].splitlines()[0]}")
        else:
            log(f"{label(name)}: {len(result['points'])} validations, best ppl {result['best_ppl']:.3f}")
    analyse(report)
    try:
        plot_curves(report, figure)
        report["figure"] = str(figure)
    except ImportError:
        report["figure"] = None
        log("no figure: matplotlib is not installed (pip install matplotlib)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    link = None
    if report["figure"]:
        base = Path(args.markdown).resolve().parent if args.markdown not in (None, "-") else None
        link = os.path.relpath(figure, base) if base else str(figure)
    table = markdown(report, link)
    if args.markdown not in (None, "-"):
        speed.write_markdown(Path(args.markdown), table, TABLE)
    print(json.dumps(report, indent=1) if args.json else table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
