"""Our soft attention against OpenNMT-py 3.5.1's, same sizes, same data, same machine, side by side.

    python benchmarks/opennmt_compare.py [--arch lstm|transformer] [--venv /tmp/onmt-venv] [--steps-64 40]
                                         [--steps-6 150] [--decode-sentences 96] [--decode-len 25] [--json]
                                         [--markdown PATH]

``--arch transformer`` compares the Transformers instead (issue 21): ours is the ``transformer-iwslt14``
config in soft mode (6 + 6 pre-LN layers, 512 wide, 4 heads, feed-forward 1024, tied target embeddings,
dropout 0.3, attention dropout 0.1, the latent-alignment head read softly), OpenNMT-py's the same sizes
(``encoder_type``/``decoder_type: transformer``, sinusoidal positions, ``share_decoder_embeddings``, pre-LN
layers as in its 3.x default); both with Adam and an inverse-square-root warm-up. Ours has one more
single-head attention (the latent prior) and the paper's ``tanh`` output layer before the softmax.

OpenNMT-py is installed into its own virtual environment outside the repository (``--venv``,
created with ``--system-site-packages`` so that the installed torch is reused). Its wheel pins an
old torch, so it is installed with ``--no-deps`` and the requirements its command-line tools
import are installed by name; it is never a dependency of this project. Everything OpenNMT-py
writes (vocabularies, config, checkpoints, logs) goes to ``--workdir`` (default
``/tmp/onmt-bench``).

Both systems train on the IWSLT'14 *valid* split (BPE files; the train split is not shipped)
with length-bucketed batches of 64 and of 6 sentences drawn in random order, Adam and dropout
0.3, for a fixed number of steps each. Throughput is target tokens (EOS included) per second
over the report windows of ``--report-every`` steps after the first (the first holds the
warm-up): OpenNMT-py's own ``tok/s`` log figure (target side), and the same windows timed around
``Trainer.update`` for ours. Then both translate the first ``--decode-sentences`` lines of
``test.de.bpe`` at beam 5, 32 sentences per batch, every output forced to ``--decode-len``
tokens (OpenNMT-py: ``-min_length``/``-max_length``; ours: ``max_len_b`` and a prohibitive
``eos_norm``), so that the two searches do the same number of steps whatever the weights; its
time is OpenNMT-py's ``-report_time`` translation time, and the ``decode`` call for ours.

Sizes (OpenNMT-py needs the decoder's size to equal the encoder's output size): embeddings 512,
a 2-layer bidirectional LSTM encoder of 512 per direction, a 2-layer LSTM decoder of 1024, MLP
attention (OpenNMT-py: query, memory and output sizes 1024; ours ``attention_dim`` 1024),
output layer ``tanh(W [h ; c])`` of 1024, then the softmax. OpenNMT-py feeds the attentional
vector back (input feeding), ours the context: both 1024 wide.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import speed  # noqa: E402  (benchmarks/speed.py: machine description, data and markdown helpers)

ONMT_VERSION = "3.5.1"
#: what OpenNMT-py's train/translate/build_vocab import, installed by hand (its wheel pins torch < 2.3)
ONMT_REQUIREMENTS = ["configargparse", "pyonmttok", "spacy", "rapidfuzz", "pyahocorasick", "waitress",
                     "fasttext-wheel"]
#: per architecture: our shipped config and the changes that give OpenNMT-py's sizes, and OpenNMT-py's model block
ARCHS = {
    "lstm": ("iwslt14", ["model.decoder_hidden=1024", "model.attention_dim=1024", "model.output_hidden=1024"], """\
encoder_type: brnn
decoder_type: rnn
rnn_type: LSTM
layers: 2
hidden_size: 1024
word_vec_size: 512
global_attention: mlp
input_feed: 1
dropout: 0.3
param_init: 0.1
learning_rate: 0.0003
"""),
    "transformer": ("transformer-iwslt14", [], """\
encoder_type: transformer
decoder_type: transformer
position_encoding: true
layers: 6
hidden_size: 512
word_vec_size: 512
transformer_ff: 1024
heads: 4
dropout: 0.3
attention_dropout: 0.1
share_decoder_embeddings: true
param_init: 0.0
param_init_glorot: true
decay_method: noam
warmup_steps: 4000
learning_rate: 2.0
"""),
}


def install(venv: Path) -> str | None:
    """Create ``venv`` and install OpenNMT-py into it; returns None, or why it could not be done."""
    py = venv / "bin" / "python"
    if not py.exists():
        r = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], capture_output=True,
                           text=True)
        if r.returncode:
            return f"python -m venv failed: {r.stderr.strip()[-500:]}"
    check = [str(py), "-c", "import onmt.bin.train, onmt.bin.translate, onmt.bin.build_vocab, onmt; "
             "print(onmt.__version__)"]
    if subprocess.run(check, capture_output=True, text=True).stdout.strip() == ONMT_VERSION:
        return None
    steps = [[str(py), "-m", "pip", "install", "--no-deps", f"OpenNMT-py=={ONMT_VERSION}"],
             [str(py), "-m", "pip", "install", *ONMT_REQUIREMENTS]]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            return f"{' '.join(cmd[2:])} failed: {r.stderr.strip()[-800:]}"
    r = subprocess.run(check, capture_output=True, text=True)
    if r.returncode:
        return f"OpenNMT-py installed but does not import: {r.stderr.strip()[-800:]}"
    return None


def onmt_config(work: Path, data: Path, batch: int, steps: int, report_every: int, max_len: int,
                arch: str = "lstm") -> Path:
    config = f"""# written by benchmarks/opennmt_compare.py
save_data: {work}/run
src_vocab: {work}/vocab.src
tgt_vocab: {work}/vocab.tgt
src_vocab_size: 100000
tgt_vocab_size: 100000
overwrite: true
data:
    corpus_1:
        path_src: {data}/valid.de.bpe
        path_tgt: {data}/valid.en.bpe
        transforms: [filtertoolong]
    valid:
        path_src: {data}/valid.de.bpe
        path_tgt: {data}/valid.en.bpe
src_seq_length: {max_len}
tgt_seq_length: {max_len}
save_model: {work}/model_b{batch}
save_checkpoint_steps: {steps}
train_steps: {steps}
valid_steps: 1000000
report_every: {report_every}
seed: 1
num_workers: 0
world_size: 1
gpu_ranks: []
model_type: text
{ARCHS[arch][2]}batch_type: sents
batch_size: {batch}
normalization: sents
optim: adam
adam_beta1: 0.9
adam_beta2: 0.999
max_grad_norm: 5
"""
    path = work / f"config_b{batch}.yaml"
    path.write_text(config)
    return path


def onmt_bin(venv: Path, name: str) -> list[str]:
    return [str(venv / "bin" / "python"), "-c", f"import sys; from onmt.bin.{name} import main; sys.exit(main())"]


def run_onmt_train(venv: Path, work: Path, data: Path, batch: int, steps: int, report_every: int, max_len: int,
                   env: dict, arch: str = "lstm") -> dict:
    config = onmt_config(work, data, batch, steps, report_every, max_len, arch)
    if not (work / "vocab.src").exists():
        r = subprocess.run(onmt_bin(venv, "build_vocab") + ["-config", str(config), "-n_sample", "-1"],
                           capture_output=True, text=True, env=env)
        if r.returncode:
            raise RuntimeError(f"onmt_build_vocab failed: {r.stderr[-800:]}")
    start = time.perf_counter()
    r = subprocess.run(onmt_bin(venv, "train") + ["-config", str(config)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    log = r.stdout + r.stderr
    (work / f"train_b{batch}.log").write_text(log)
    if r.returncode:
        raise RuntimeError(f"onmt_train failed: {log[-1500:]}")
    windows = [float(m.group(2)) for m in re.finditer(r"(\d+)/\s*(\d+) tok/s", log)]
    timed = windows[1:] or windows
    params = re.search(r"\* number of parameters: (\d+)", log)
    return {
        "tokens_per_s": statistics.median(timed) if timed else None,
        "window_tokens_per_s": windows,
        "wall_s": wall,
        "steps": steps,
        "params_m": int(params.group(1)) / 1e6 if params else None,
        "checkpoint": str(work / f"model_b{batch}_step_{steps}.pt"),
    }


def run_onmt_translate(venv: Path, work: Path, checkpoint: str, src: Path, length: int, env: dict) -> dict:
    out = work / "pred.txt"
    cmd = onmt_bin(venv, "translate") + ["-model", checkpoint, "-src", str(src), "-output", str(out), "-beam_size", "5",
                                         "-batch_size", "32", "-batch_type", "sents", "-min_length", str(length),
                                         "-max_length", str(length), "-report_time"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**env, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    log = r.stdout + r.stderr
    (work / "translate.log").write_text(log)
    if r.returncode:
        raise RuntimeError(f"onmt_translate failed: {log[-1500:]}")
    lines = out.read_text().splitlines()
    # "Average translation time (ms)" per sentence is printed with more digits than the total
    average = re.search(r"Average translation time \(ms\): ([\d.]+)", log)
    total = re.search(r"Total translation time \(s\): ([\d.]+)", log)
    seconds = float(average.group(1)) * len(lines) / 1000 if average else float(total.group(1)) if total else None
    return {
        "sent_per_s": len(lines) / seconds if seconds else None,
        "seconds": seconds,
        "sentences": len(lines),
        "out_tokens_per_sent": sum(len(x.split()) for x in lines) / max(1, len(lines)),
    }


def run_ours(data: Path, batch_size: int, steps: int, report_every: int, threads: int,
             arch: str = "lstm") -> tuple[dict, object]:
    import torch

    from varattn.latent import make_objective
    from varattn.nmt.batching import bucket_batches, collate
    from varattn.nmt.builder import build_model
    from varattn.nmt.config import load_config
    from varattn.nmt.corpora.corpus import read_parallel
    from varattn.nmt.vocab import Vocab
    from varattn.training import Trainer

    torch.set_num_threads(threads)
    config, sets, _ = ARCHS[arch]
    cfg = load_config(config, {"mode": "soft", "batch_size": batch_size}, sets)
    corpus = read_parallel(data / "valid.de.bpe", data / "valid.en.bpe", max_len=cfg.max_len)
    src_vocab, tgt_vocab = Vocab.build(corpus.src), Vocab.build(corpus.tgt)
    src = [src_vocab.encode(s) for s in corpus.src]
    tgt = [tgt_vocab.encode(t) for t in corpus.tgt]
    order = bucket_batches(src, tgt, batch_size, shuffle=True, seed=1)
    torch.manual_seed(cfg.seed)
    objective = make_objective("soft")
    model = build_model(cfg.model_config(len(src_vocab), len(tgt_vocab)), objective)
    trainer = speed.trainer_stand_in(cfg, model, objective, torch.device("cpu"))
    model.train()
    windows, tokens, start = [], 0, time.perf_counter()
    for step in range(steps):
        group = order[step % len(order)]
        batch = collate([src[i] for i in group], [tgt[i] for i in group], group)
        Trainer.update(trainer, batch)
        tokens += batch.num_tokens
        if (step + 1) % report_every == 0:
            now = time.perf_counter()
            windows.append(tokens / (now - start))
            tokens, start = 0, now
    timed = windows[1:] or windows
    result = {"tokens_per_s": statistics.median(timed) if timed else None, "window_tokens_per_s": windows,
              "steps": steps, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    return result, (model, src_vocab)


def decode_ours(model, src_vocab, src_file: Path, sentences: int, length: int) -> dict:
    from varattn.latent import make_objective
    from varattn.nmt.corpora.corpus import read_lines
    from varattn.nmt.search import DecodingOptions, decode

    lines = read_lines(src_file)[:sentences]
    ids = sorted((src_vocab.encode(line.split()) for line in lines), key=len, reverse=True)
    start = time.perf_counter()
    out_tokens = 0
    soft = make_objective("soft")
    options = DecodingOptions(beam=5, eos_norm=1e6, max_len_a=0.0, max_len_b=length)
    for k in range(0, len(ids), 32):
        hyps = decode(model, ids[k : k + 32], soft, options)
        out_tokens += sum(len(h.tokens) for h in hyps)
    seconds = time.perf_counter() - start
    return {"sent_per_s": len(ids) / seconds, "seconds": seconds, "sentences": len(ids),
            "out_tokens_per_sent": out_tokens / len(ids)}


def markdown(report: dict) -> str:
    mach = report["machine"]
    lines = [
        f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['threads']} threads, torch {mach['torch']}, "
        f"{mach['date']} (1-min load average at start {speed._fmt(mach['load_average'], 2)}); "
        f"OpenNMT-py {ONMT_VERSION}.",
        "",
    ]
    if report.get("onmt_error"):
        lines += [f"OpenNMT-py could not be run here: {report['onmt_error']}", ""]
    arch = report.get("arch", "lstm")
    lines += [f"| measure ({'Transformer' if arch == 'transformer' else 'LSTM'}) | OpenNMT-py | varattn soft | ratio |",
              "|---|---:|---:|---:|"]
    for batch in report["batches"]:
        o = report["onmt"].get(f"train_b{batch}", {}).get("tokens_per_s")
        v = report["ours"][f"train_b{batch}"]["tokens_per_s"]
        lines.append(f"| training, batches of {batch}: target tokens/s | {speed._fmt(o, 0)} | {v:.0f} "
                     f"| {speed._fmt(v / o if o else None, 2)} |")
    o = report["onmt"].get("decode", {}).get("sent_per_s")
    v = report["ours"]["decode"]["sent_per_s"]
    lines.append(f"| beam-5 decoding, sentences/s ({report['ours']['decode']['sentences']} sentences, "
                 f"{report['decode_len']} tokens each) | {speed._fmt(o, 2)} | {v:.2f} "
                 f"| {speed._fmt(v / o if o else None, 2)} |")
    po, pv = report["onmt"].get("params_m"), report["ours"].get("params_m")
    lines.append(f"| parameters (millions) | {speed._fmt(po, 1)} | {speed._fmt(pv, 1)} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="lstm",
                        help="compare the LSTMs (default, the paper's model) or the Transformers")
    parser.add_argument("--venv", default="/tmp/onmt-venv",
                        help="virtual environment for OpenNMT-py (outside the repository)")
    parser.add_argument("--workdir", default="/tmp/onmt-bench", help="where OpenNMT-py's files go")
    parser.add_argument("--data", default=None, help="directory with valid.*.bpe and test.de.bpe "
                        f"(default $VARATTN_DATA or {speed.DEFAULT_DATA}, from varattn prepare iwslt14)")
    parser.add_argument("--batches", default="64,6", help="comma-separated batch sizes (sentences) to train with")
    parser.add_argument("--steps-64", type=int, default=40, help="training steps with batches of 64 sentences")
    parser.add_argument("--steps-6", type=int, default=150,
                        help="training steps with batches of 6 sentences (and of any other size)")
    parser.add_argument("--report-every", type=int, default=0,
                        help="steps per timing window (default: a fifth of the steps)")
    parser.add_argument("--decode-sentences", type=int, default=96, help="test sentences to translate")
    parser.add_argument("--decode-len", type=int, default=25, help="output tokens forced on every translation")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: all cores)")
    parser.add_argument("--skip-onmt", action="store_true", help="run only our side")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--markdown", default=None, metavar="PATH",
                        help="also (re)write the OpenNMT-py table in PATH (the record: docs/benchmarks.md); "
                             "by default the docs are left alone")
    args = parser.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    data = speed.data_dir(args.data)
    work = Path(args.workdir) / args.arch
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    batches = [int(b) for b in args.batches.split(",")]
    steps = {b: args.steps_64 if b == 64 else args.steps_6 for b in batches}
    every = {b: args.report_every or max(1, steps[b] // 5) for b in batches}
    report = {"machine": speed.machine(threads), "batches": batches, "decode_len": args.decode_len, "onmt": {},
              "ours": {}, "arch": args.arch, "our_config": ARCHS[args.arch][0], "our_sets": ARCHS[args.arch][1]}
    error = None if args.skip_onmt else install(Path(args.venv))
    if args.skip_onmt:
        error = "skipped (--skip-onmt)"
    for b in batches:
        if error is None:
            try:
                report["onmt"][f"train_b{b}"] = run_onmt_train(Path(args.venv), work, data, b, steps[b], every[b], 125,
                                                                env, args.arch)
            except RuntimeError as exc:
                error = str(exc)
        print(f"OpenNMT-py batch {b}: {report['onmt'].get(f'train_b{b}', {}).get('tokens_per_s')}", file=sys.stderr)
        ours, (model, src_vocab) = run_ours(data, b, steps[b], every[b], threads, args.arch)
        report["ours"][f"train_b{b}"] = ours
        report["ours"]["params_m"] = ours["params_m"]
        print(f"varattn batch {b}: {ours['tokens_per_s']:.0f}", file=sys.stderr)
    src = work / "test_head.de.bpe"
    src.write_text("\n".join((data / "test.de.bpe").read_text(encoding="utf-8").splitlines()[: args.decode_sentences])
                   + "\n")
    if error is None:
        try:
            trained = report["onmt"][f"train_b{batches[-1]}"]
            report["onmt"]["decode"] = run_onmt_translate(Path(args.venv), work, trained["checkpoint"], src,
                                                          args.decode_len, env)
            report["onmt"]["params_m"] = trained["params_m"]
        except RuntimeError as exc:
            error = str(exc)
    report["ours"]["decode"] = decode_ours(model, src_vocab, src, args.decode_sentences, args.decode_len)
    report["onmt_error"] = error
    table = markdown(report)
    if args.markdown not in (None, "-"):
        marker = "opennmt_compare.py" if args.arch == "lstm" else f"opennmt_compare.py --arch {args.arch}"
        speed.write_markdown(Path(args.markdown), table, marker)
    print(json.dumps(report, indent=1) if args.json else table)


if __name__ == "__main__":
    main()
