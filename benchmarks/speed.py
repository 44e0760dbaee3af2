"""Training and decoding speed of every mode, side by side and against the machine's limit.

    python benchmarks/speed.py [--configs small,iwslt14] [--modes soft,var-sample,...] [--repeats 3]
                               [--min-seconds 5] [--enum-repeats 2] [--batches 2] [--threads N] [--json]
                               [--markdown PATH] [--plain] [--peak-size 2048]

For each shipped config (``small``, ``iwslt14``) and each mode of ``varattn.latent.mode_names()``,
one subprocess builds the model with that config's sizes, the vocabularies of the IWSLT'14 *valid*
split (BPE files, every type) and a fixed sample of length-bucketed batches of 32 real sentence
pairs, then measures:

* ``tokens_per_s``: target tokens (EOS included) per second of training -- forward, backward,
  gradient clipping and Adam step, exactly ``Trainer.update`` -- after one warm-up pass over the
  sample, median over the timed repeats (each repeat is one pass over the sample; at least
  ``--repeats`` of them, more until ``--min-seconds`` are timed, so that short steps are not
  judged on a handful of samples);
* ``ratio_to_soft``: that throughput over ``soft``'s at the same config, measured in the same run;
* ``peak_mem_mb``: the process's peak resident memory during the warm-up and timed steps minus its
  resident memory just before the first step (the high-water mark is reset through
  ``/proc/self/clear_refs`` first; elsewhere ``ru_maxrss`` is used). It includes the gradients and
  Adam's two moment buffers as well as the activations;
* ``gflop_per_step``: the matrix work of one training step counted from the layer sizes and the
  batch's real lengths (see ``step_flops``), ``gflop_per_s`` and ``frac_of_mm_peak``: that work per
  second as a fraction of the machine's measured ``torch.mm`` rate with the same threads
  (``frac_of_onednn_peak``: of oneDNN's rate for the same product, often higher on AMD processors);
* ``flop_bound_ratio``: ``soft``'s matrix work over this mode's, the best ratio to ``soft`` the
  arithmetic allows when both run at the same rate, and ``frac_of_bound`` = ratio / bound;
* ``decode_sent_per_s``: beam-5 translation (``varattn.nmt.search.decode`` with the mode's
  predictive rule over every source position, ``topk=0``, and ``varattn translate``'s length penalty)
  of the sample's middle batch, with the model as left by the timed steps. That model is untrained and
  would stop its outputs at random lengths, so every output is forced to its source's length (``max_len_a=1``,
  ``max_len_b=0`` and a prohibitive ``eos_norm``), about what a trained model writes on this data.

``--plain`` measures with every fast path of ``varattn.kernels`` off (``VARATTN_FAST=0`` in the
workers' environment; the machine line records which).

``--json`` prints one JSON object (``machine``, then ``results[config][mode]``); otherwise a markdown
table with the machine description is printed. ``--markdown PATH`` also writes it into PATH between its
markers (``--markdown docs/benchmarks.md`` updates the record; by default no file is touched).
The data directory is ``--data``, else ``$VARATTN_DATA``, else ``data/iwslt14``
relative to the repository root (where ``varattn prepare iwslt14 URL_OR_ARCHIVE data/iwslt14`` writes it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_name  # benchmarks/machine.py, beside this script

REPO = Path(__file__).resolve().parent.parent
#: the data directory, relative to the repository root: ``varattn prepare iwslt14 URL_OR_ARCHIVE data/iwslt14``
DEFAULT_DATA = Path("data", "iwslt14")
DEFAULT_CONFIGS = ("small", "iwslt14")
#: modes whose loss evaluates the output layer at every source position
ENUMERATING = ("marginal", "hard-enum", "var-enum")
#: most timed passes per mode, whatever --min-seconds asks
MAX_REPEATS = 100


# -- the machine ------------------------------------------------------------------------------
def matmul_peak(threads: int, device: str = "cpu", precision: str = "fp32", n: int = 2048,
                repeats: int = 5) -> dict:
    """GFLOP/s of a large product on ``device``: fp32 ``torch.mm`` (the BLAS PyTorch uses), on the CPU
    also oneDNN's fp32 kernel where present, and with ``precision`` bf16 a bfloat16 ``torch.mm``."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return 2 * n**3 / min(times) / 1e9

    out = {"torch_mm_gflops": best(lambda: torch.mm(a, b)), "onednn_gflops": None, "bf16_mm_gflops": None,
           "size": n, "device": str(a.device)}
    if precision == "bf16":
        a16, b16 = a.bfloat16(), b.bfloat16()
        out["bf16_mm_gflops"] = best(lambda: torch.mm(a16, b16))
    if not a.is_cuda:
        try:  # oneDNN's own fp32 kernel (what nn.LSTM uses on the CPU); a private entry point, so optional
            am, bm = a.to_mkldnn(), b.to_mkldnn()
            out["onednn_gflops"] = best(lambda: torch._C._nn.mkldnn_linear(am, bm, None))
        except Exception:  # noqa: BLE001 - not every build has it
            pass
    return out


def machine(threads: int, device: str = "cpu", precision: str = "fp32") -> dict:
    import torch

    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return {
        "cpu": cpu_name(),
        "gpu": gpu,
        "device": device,
        "precision": precision,
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "fast_paths": os.environ.get("VARATTN_FAST", "1").strip().lower() not in ("0", "false", "no", "off"),
    }


# -- the arithmetic ---------------------------------------------------------------------------
def _lstm_per_token(in_dim: int, hidden: int, layers: int, directions: int) -> float:
    """FLOPs (multiply-adds x 2) of one token through a stacked LSTM, all layers and directions."""
    total = 0.0
    for layer in range(layers):
        width = in_dim if layer == 0 else directions * hidden
        total += directions * 2 * 4 * hidden * (width + hidden)
    return total


def step_flops(m, batch, mode: str, objective) -> dict:
    """Matrix FLOPs of one training step of ``mode`` on ``batch`` (forward + backward), by part.

    Counted at real tokens only (padding is overhead, not work): LSTMs at real source/target
    tokens, attention and output layer at real target tokens and, per token, the real length of
    its source. The backward pass of a product costs twice its forward (input and weight
    gradients); passes without gradient (the REINFORCE baseline) count once; the output layer of
    enumeration counts once more when it is split into several checkpointed chunks (recomputed in
    the backward pass): ``recompute`` holds that share separately. Element-wise work (gates,
    tanh, softmax, Adam) is not counted.
    """
    src_len = batch.src_lengths.tolist()
    tgt_len = batch.tgt_mask.sum(1).tolist()
    ns, nt = sum(src_len), sum(tgt_len)
    pairs = sum(s * t for s, t in zip(src_len, tgt_len))  # real (target token, source position) pairs
    mem = 2 * m.encoder_hidden
    gen = 2 * m.output_hidden * m.tgt_vocab_size  # one row through the generator
    fwd = {
        "encoder": ns * _lstm_per_token(m.embed_dim, m.encoder_hidden, m.encoder_layers, 2),
        # the first decoder layer reads [emb ; feed], the others the layer below
        "decoder": nt * sum(2 * 4 * m.decoder_hidden * ((m.embed_dim + mem if layer == 0 else m.decoder_hidden)
                                                        + m.decoder_hidden) for layer in range(m.decoder_layers)),
        "attention": ns * 2 * mem * m.attention_dim + nt * 2 * m.decoder_hidden * m.attention_dim
        + pairs * 2 * (m.attention_dim + mem),
        "output_proj": nt * 2 * m.decoder_hidden * m.output_hidden + ns * 2 * mem * m.output_hidden,
    }
    total = {k: 3 * v for k, v in fwd.items()}
    samples = getattr(objective, "num_samples", 1)
    recompute = 0.0
    if mode in ENUMERATING:
        total["output"] = 3 * pairs * gen
        if pairs > m.enum_chunk_rows:  # more than one chunk: each is recomputed in the backward pass
            recompute = pairs * gen
    elif mode in ("hard-sample", "var-sample"):
        total["output"] = 3 * samples * (nt * gen + pairs * 2 * m.output_hidden) + nt * gen  # + baseline
    elif mode == "rws":
        total["output"] = 3 * samples * (nt * gen + pairs * 2 * m.output_hidden)
    else:  # soft, var-relaxed, var-gumbel: weights @ memory, then the generator
        total["output"] = 3 * samples * (nt * gen + pairs * 2 * m.output_hidden)
    if objective.uses_posterior:
        hi = 2 * m.inference_hidden
        total["inference"] = 3 * (
            (ns + nt) * _lstm_per_token(m.embed_dim, m.inference_hidden, m.inference_layers, 2)
            + nt * 2 * hi * hi + pairs * 2 * hi)
    out = {k: v / 1e9 for k, v in total.items()}
    out["recompute"] = recompute / 1e9
    out["total"] = sum(total.values()) / 1e9 + out["recompute"]
    out["total_no_recompute"] = sum(total.values()) / 1e9
    return out


# -- data ------------------------------------------------------------------------------------
def data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if os.environ.get("VARATTN_DATA"):
        return Path(os.environ["VARATTN_DATA"])
    return REPO / DEFAULT_DATA


def load_sample(data: Path, max_len: int | None, batch_size: int, n_batches: int):
    """Vocabularies of the valid split and ``n_batches`` length-bucketed batches at evenly spaced quantiles."""
    from varattn.nmt.batching import bucket_batches, collate
    from varattn.nmt.corpora.corpus import read_parallel
    from varattn.nmt.vocab import Vocab

    corpus = read_parallel(data / "valid.de.bpe", data / "valid.en.bpe", max_len=max_len)
    src_vocab, tgt_vocab = Vocab.build(corpus.src), Vocab.build(corpus.tgt)
    src = [src_vocab.encode(s) for s in corpus.src]
    tgt = [tgt_vocab.encode(t) for t in corpus.tgt]
    groups = [g for g in bucket_batches(src, tgt, batch_size, shuffle=False) if len(g) == batch_size]
    picks = [groups[int((k + 0.5) / n_batches * len(groups))] for k in range(n_batches)]
    batches = [collate([src[i] for i in g], [tgt[i] for i in g], g) for g in picks]
    middle = picks[n_batches // 2]
    return src_vocab, tgt_vocab, batches, [src[i] for i in middle]


# -- one (config, mode), in its own process ------------------------------------------------------
def _rss_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def trainer_stand_in(cfg, model, objective, device):
    """A ``Trainer`` holding only what ``Trainer.update`` reads, so that it can be timed alone (a real one
    also owns files, data and metrics)."""
    from varattn.nmt.task import NMTTask
    from varattn.training import Trainer, TrainerState, make_optimizer
    from varattn.training.distributed import SINGLE

    task = NMTTask(cfg)
    task.objective = objective
    trainer = Trainer.__new__(Trainer)
    vars(trainer).update(cfg=cfg, state=TrainerState(lr=cfg.lr), task=task, model=model, device=device,
                         optimizer=make_optimizer(model, cfg.lr), world=SINGLE, stop_agreed=False)
    return trainer


def measure(config: str, mode: str, args) -> dict:
    import torch

    from varattn.latent import make_objective
    from varattn.nmt.config import load_config
    from varattn.nmt.model import LatentAlignmentNMT
    from varattn.training import Trainer

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(config, {"mode": mode, "device": args.device, "precision": args.precision}, args.set)
    src_vocab, tgt_vocab, batches, decode_src = load_sample(data_dir(args.data), cfg.max_len, args.batch_size,
                                                            args.batches)
    batches = [b.to(device) for b in batches]
    torch.manual_seed(cfg.seed)
    objective = make_objective(mode, **cfg.objective)
    model_cfg = cfg.model_config(len(src_vocab), len(tgt_vocab))
    model = LatentAlignmentNMT(model_cfg, with_inference=objective.uses_posterior).to(device)
    trainer = trainer_stand_in(cfg, model, objective, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model.train()
    tokens = sum(b.num_tokens for b in batches)
    repeats = args.enum_repeats if (config != "small" and mode in ENUMERATING) else args.repeats

    if device.type == "cuda":
        rss_before = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        peak_method = "torch.cuda.max_memory_allocated"
    else:
        rss_before = _rss_mb("VmRSS")
        peak_method = "VmHWM after clear_refs" if _reset_peak() else "ru_maxrss"
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    skipped = 0
    for batch in batches:  # warm-up: allocates Adam's state, warms the allocator and kernels
        skipped += Trainer.update(trainer, batch) is None
    times: list[float] = []
    while len(times) < repeats or (sum(times) < args.min_seconds and len(times) < MAX_REPEATS):
        sync()
        start = time.perf_counter()
        for batch in batches:
            skipped += Trainer.update(trainer, batch) is None
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20 - rss_before
    elif peak_method.startswith("VmHWM"):
        peak = _rss_mb("VmHWM") - rss_before
    else:  # ru_maxrss is the high-water mark of the process's whole life
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - max(rss_before, maxrss_before)
    step_s = statistics.median(times)

    flops = [step_flops(model_cfg, b, mode, objective) for b in batches]
    soft_flops = [step_flops(model_cfg, b, "soft", make_objective("soft")) for b in batches]
    gflop = sum(f["total"] for f in flops)
    parts = {k: round(sum(f[k] for f in flops) / len(flops), 2) for k in flops[0]}
    result = {
        "config": config,
        "mode": mode,
        "tokens_per_s": tokens / step_s,
        "sample_tokens": tokens,
        "sample_batches": [list(b.src.shape) + [b.tgt_mask.shape[1]] for b in batches],
        "seconds_per_step": step_s / len(batches),
        "repeat_seconds": times,
        "peak_mem_mb": peak,
        "rss_before_mb": rss_before,
        "peak_method": peak_method,
        "device": str(device),
        "precision": cfg.precision,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflop_per_step": gflop / len(batches),
        "gflop_parts_per_step": parts,
        "gflop_per_s": gflop / step_s,
        "flop_bound_ratio": sum(f["total_no_recompute"] for f in soft_flops)
        / sum(f["total_no_recompute"] for f in flops),
        "skipped_steps": skipped,
        "threads": torch.get_num_threads(),
        "enum_chunk_rows": model_cfg.enum_chunk_rows,
    }
    if args.decode_sentences > 0:
        result.update(decode_speed(model, objective, decode_src[: args.decode_sentences]))
    return result


def decode_speed(model, objective, src_ids: list[list[int]]) -> dict:
    try:
        from varattn.nmt.search import DecodingOptions, decode
    except ImportError as exc:  # pragma: no cover - the search module ships with the package now
        return {"decode_sent_per_s": None, "decode_note": f"no search module: {exc}"}
    import torch

    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    # an untrained model ends its outputs at random lengths: force each to its source's length
    # (about what a trained model produces on this data), so that modes are timed on the same work
    hyps = decode(model, src_ids, objective, DecodingOptions(beam=5, topk=0, eos_norm=1e6, max_len_a=1.0, max_len_b=0))
    sync()
    seconds = time.perf_counter() - start
    out_tokens = sum(len(h.tokens) + 1 for h in hyps)
    return {
        "decode_sent_per_s": len(src_ids) / seconds,
        "decode_sentences": len(src_ids),
        "decode_out_tokens_per_sent": out_tokens / len(src_ids),
        "decode_src_tokens_per_sent": sum(len(s) for s in src_ids) / len(src_ids),
        "decode_rule": objective.predictive,
    }


def run_one(config: str, mode: str, args, timeout: float | None = None) -> dict:
    """``measure`` in a fresh interpreter, so that peak memory and allocator state are its own (``timeout``:
    seconds before the worker is stopped and the mode reported as an error)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", config, mode, "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--min-seconds", str(args.min_seconds),
           "--enum-repeats", str(args.enum_repeats), "--device", args.device, "--precision", args.precision,
           "--batches", str(args.batches),
           "--batch-size", str(args.batch_size), "--decode-sentences", str(args.decode_sentences)]
    if args.data:
        cmd += ["--data", args.data]
    for s in args.set:
        cmd += ["--set", s]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"config": config, "mode": mode, "error": [f"stopped after {timeout:.0f} s"]}
    if proc.returncode != 0:
        return {"config": config, "mode": mode, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- report ----------------------------------------------------------------------------------
def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict) -> str:
    mach, peak = report["machine"], report["matmul_peak"]
    gpu = f"GPU {mach['gpu']}, " if mach.get("gpu") else ""
    size = f"{peak['size']}x{peak['size']}"
    bf16 = f"; bf16 torch.mm {peak['bf16_mm_gflops']:.0f} GFLOP/s" if peak.get("bf16_mm_gflops") else ""
    lines = [
        f"Machine: {gpu}{mach['cpu']}, {mach['cores']} cores, {mach['threads']} threads, torch {mach['torch']}, "
        f"Python {mach['python']}, {mach['date']} (1-min load average at start {_fmt(mach['load_average'], 2)}).",
        f"Device {mach.get('device', 'cpu')}, training precision {mach.get('precision', 'fp32')} (decoding in fp32)"
        + ("." if mach.get("fast_paths", True) else "; fast paths off (VARATTN_FAST=0)."),
        f"Matrix-multiply peak ({size}, {mach['threads']} threads): fp32 torch.mm "
        f"{peak['torch_mm_gflops']:.0f} GFLOP/s; fp32 oneDNN {_fmt(peak['onednn_gflops'], 0)} GFLOP/s{bf16}.",
        "",
    ]
    for config, modes in report["results"].items():
        first = next((r for r in modes.values() if "error" not in r), None)
        if first:
            shapes = ", ".join(f"{b}x{s} src, {t} tgt" for b, s, t in first["sample_batches"])
            lines.append(f"**{config}** (batches: {shapes}; {first['sample_tokens']} target tokens per pass)")
        lines += [
            "",
            "| mode | tokens/s | ratio to soft | FLOP bound | of bound | peak MB | GFLOP/step | GFLOP/s "
            "| of mm peak | of oneDNN peak | decode sent/s (beam 5) | out tokens/sent |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, r in modes.items():
            if "error" in r:
                lines.append(f"| {mode} | error: {' '.join(r['error'])} |" + " |" * 10)
                continue
            lines.append(
                f"| {mode} | {r['tokens_per_s']:.0f} | {_fmt(r.get('ratio_to_soft'), 2)} "
                f"| {r['flop_bound_ratio']:.2f} | {_fmt(r.get('frac_of_bound'), 2)} | {r['peak_mem_mb']:.0f} "
                f"| {r['gflop_per_step']:.1f} | {r['gflop_per_s']:.0f} | {_fmt(r['frac_of_mm_peak'], 2)} "
                f"| {_fmt(r.get('frac_of_onednn_peak'), 2)} "
                f"| {_fmt(r.get('decode_sent_per_s'), 2)} | {_fmt(r.get('decode_out_tokens_per_sent'), 1)} |")
        lines.append("")
    return "\n".join(lines)


def table_name(device: str, precision: str) -> str:
    """The marker of a run's table in the docs: the CPU fp32 table, or one per device kind and precision."""
    kind = device.split(":")[0]
    return "speed.py" if (kind, precision) == ("cpu", "fp32") else f"speed.py {kind} {precision}"


def write_markdown(path: Path, table: str, name: str = "speed.py") -> None:
    """Put ``table`` between the ``name`` table markers of ``path`` (or append it to the file)."""
    begin, end = f"<!-- {name} table begin -->", f"<!-- {name} table end -->"
    block = f"{begin}\n{table.rstrip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (``benchmarks/gpu_run.py`` builds its runs' arguments with it too)."""
    from varattn.device import PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="comma-separated shipped configs")
    parser.add_argument("--modes", default=None, help="comma-separated modes (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the sample")
    parser.add_argument("--min-seconds", type=float, default=5.0,
                        help="repeat passes beyond --repeats until this much time is timed (short steps are noisy)")
    parser.add_argument("--enum-repeats", type=int, default=2,
                        help="timed passes for the enumerating modes beyond the small config")
    parser.add_argument("--batches", type=int, default=2, help="batches in the fixed sample")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per batch")
    parser.add_argument("--decode-sentences", type=int, default=32, help="sentences to decode at beam 5 (0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--peak-size", type=int, default=2048,
                        help="side of the square product that measures the matrix-multiply peak (default 2048)")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU if there is one, else the CPU), cpu, cuda")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                        help="training precision: bf16 runs the forward pass under torch.autocast")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. model.enum_chunk_rows=4096")
    parser.add_argument("--data", default=None,
                        help=f"directory with valid.de.bpe / valid.en.bpe (default $VARATTN_DATA or {DEFAULT_DATA})")
    parser.add_argument("--plain", action="store_true",
                        help="every fast path of varattn.kernels off (VARATTN_FAST=0 in the workers)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--markdown", default=None, metavar="PATH",
                        help="also write the table into PATH (the record: docs/benchmarks.md); by default the "
                             "docs are left alone, so a quick run never overwrites the record")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    return parser


def collect(args, configs: list[str], modes: list[str], deadline: float | None = None, progress: bool = True) -> dict:
    """The report (``machine``, ``matmul_peak``, ``results[config][mode]``) of every (config, mode), each
    measured in its own worker process, with the ratios to ``soft`` and to the machine's peak filled in.

    ``deadline`` (a ``time.monotonic()`` value): each worker is stopped when it is reached, and the modes
    after it are reported as errors without being started. ``progress``: one line per mode on stderr.
    """
    report = {"machine": machine(args.threads, args.device, args.precision),
              "matmul_peak": matmul_peak(args.threads, args.device, args.precision, n=args.peak_size),
              "results": {}}
    for config in configs:
        results = {}
        for mode in modes:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                r = {"config": config, "mode": mode, "error": ["not run: time budget spent"]}
            else:
                r = run_one(config, mode, args, timeout=left)
            results[mode] = r
            if progress:
                print(f"{config} {mode}: " + (f"{r['tokens_per_s']:.0f} tok/s, peak {r['peak_mem_mb']:.0f} MB"
                                               if "error" not in r else f"error {r['error']}"), file=sys.stderr)
        soft = results.get("soft", {}).get("tokens_per_s")
        for r in results.values():
            if "error" in r:
                continue
            r["ratio_to_soft"] = r["tokens_per_s"] / soft if soft else None
            r["frac_of_bound"] = r["ratio_to_soft"] / r["flop_bound_ratio"] if soft else None
            peak = report["matmul_peak"]
            r["frac_of_mm_peak"] = r["gflop_per_s"] / (peak["bf16_mm_gflops"] or peak["torch_mm_gflops"])
            onednn = report["matmul_peak"]["onednn_gflops"]
            r["frac_of_onednn_peak"] = r["gflop_per_s"] / onednn if onednn else None
        report["results"][config] = results
    return report


def main(argv: list[str] | None = None) -> None:
    from varattn.device import resolve_device
    from varattn.errors import VarattnError

    parser = build_parser()
    args = parser.parse_args(argv)
    args.threads = args.threads or os.cpu_count() or 1
    try:
        args.device = str(resolve_device(args.device))
    except VarattnError as exc:
        parser.error(str(exc))
    if args.worker:
        print(json.dumps(measure(*args.worker, args)))
        return

    from torch import device as torch_device

    from varattn.device import check_precision
    from varattn.latent import mode_names

    try:
        check_precision(torch_device(args.device), args.precision)
    except VarattnError as exc:
        parser.error(str(exc))
    data = data_dir(args.data)
    if not (data / "valid.de.bpe").is_file():
        parser.error(f"no valid.de.bpe in {data}: run `varattn prepare iwslt14 URL_OR_ARCHIVE {DEFAULT_DATA}`, "
                     "give --data or set VARATTN_DATA")
    modes = args.modes.split(",") if args.modes else mode_names()
    if args.plain:
        os.environ["VARATTN_FAST"] = "0"  # inherited by the worker processes
    report = collect(args, args.configs.split(","), modes, progress=not args.json)
    if args.markdown not in (None, "-"):
        write_markdown(Path(args.markdown), markdown(report), table_name(args.device, args.precision))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(markdown(report))


if __name__ == "__main__":
    main()
