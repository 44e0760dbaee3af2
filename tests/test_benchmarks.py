"""``benchmarks/speed.py`` runs end to end and prints what the performance issue asks for.

Nothing here judges a timing: the run is as short as the script allows (one pass, batches of
eight, two sentences decoded, on a small corpus the test writes in place of IWSLT'14's valid
split) and only the contents of the report are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from varattn.device import bf16_supported
from varattn.nmt.corpora.synthetic import make_splits

REPO = Path(__file__).resolve().parent.parent


NO_BF16 = pytest.mark.skipif(not bf16_supported("cpu"),
                             reason="this CPU has no bf16 LSTM kernel (oneDNN needs AVX-512)")


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=NO_BF16)])
def test_speed_json_report_has_every_required_figure(precision, tmp_path):
    pairs = make_splits(seed=0, n_train=80, n_valid=0, n_test=0)["train"]
    (tmp_path / "valid.de.bpe").write_text("".join(" ".join(p.src) + "\n" for p in pairs), encoding="utf-8")
    (tmp_path / "valid.en.bpe").write_text("".join(" ".join(p.tgt) + "\n" for p in pairs), encoding="utf-8")
    markdown = tmp_path / "bench.md"
    cmd = [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--configs", "small", "--modes", "soft,var-sample",
           "--repeats", "1", "--min-seconds", "0", "--batch-size", "8", "--decode-sentences", "2", "--threads", "1",
           "--device", "cpu", "--precision", precision, "--data", str(tmp_path), "--json", "--markdown", str(markdown)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["machine"]["precision"] == precision
    results = report["results"]["small"]
    for mode in ("soft", "var-sample"):
        r = results[mode]
        assert r["tokens_per_s"] > 0 and r["peak_mem_mb"] >= 0 and r["decode_sent_per_s"] > 0
        assert r["precision"] == precision and r["device"] == "cpu"
    assert results["soft"]["ratio_to_soft"] == 1.0
    assert results["var-sample"]["ratio_to_soft"] == pytest.approx(
        results["var-sample"]["tokens_per_s"] / results["soft"]["tokens_per_s"])
    assert results["var-sample"]["gflop_per_step"] > results["soft"]["gflop_per_step"]  # the inference network
    table = markdown.read_text(encoding="utf-8")
    name = "speed.py" if precision == "fp32" else "speed.py cpu bf16"
    assert f"<!-- {name} table begin -->" in table and "| var-sample |" in table


def test_a_default_speed_run_leaves_the_docs_alone(tmp_path):
    """The record in docs/benchmarks.md is written only with --markdown: a quick run must not replace it."""
    pairs = make_splits(seed=0, n_train=40, n_valid=0, n_test=0)["train"]
    (tmp_path / "valid.de.bpe").write_text("".join(" ".join(p.src) + "\n" for p in pairs), encoding="utf-8")
    (tmp_path / "valid.en.bpe").write_text("".join(" ".join(p.tgt) + "\n" for p in pairs), encoding="utf-8")
    record = (REPO / "docs" / "benchmarks.md").read_bytes()
    cmd = [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--configs", "small", "--modes", "soft",
           "--repeats", "1", "--min-seconds", "0", "--batch-size", "8", "--decode-sentences", "0", "--threads", "1",
           "--device", "cpu", "--data", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| soft |" in done.stdout  # the table is printed
    assert (REPO / "docs" / "benchmarks.md").read_bytes() == record


# -- benchmarks/gpu_run.py and benchmarks/kmax_decoding.py (issue 23) ------------------------------------------
def write_tiny_multi30k(root: Path) -> Path:
    """A Multi30k-shaped directory (task1/tok, the study's four splits) of made-up sentences: enough for the
    study's data preparation and a few updates."""
    import random

    rng = random.Random(0)
    tok = root / "task1" / "tok"
    tok.mkdir(parents=True)
    for split, n in (("train", 96), ("val", 16), ("test_2016_flickr", 8), ("test_2017_flickr", 8)):
        de, en = [], []
        for _ in range(n):
            words = [f"wort{rng.randrange(20)}" for _ in range(rng.randrange(3, 9))]
            de.append(" ".join(words))
            en.append(" ".join(w.replace("wort", "word") for w in reversed(words)))
        (tok / f"{split}.lc.norm.tok.de").write_text("\n".join(de) + "\n", encoding="utf-8")
        (tok / f"{split}.lc.norm.tok.en").write_text("\n".join(en) + "\n", encoding="utf-8")
    return root


def test_gpu_run_smoke_on_the_cpu_writes_its_json_and_leaves_the_docs_alone(tmp_path):
    """The prepared GPU run, at the smallest settings on the CPU: both parts report, the JSON goes to --out, the
    docs are untouched without --markdown, and the table it would write has both parts."""
    data = write_tiny_multi30k(tmp_path / "multi30k")
    out = tmp_path / "report.json"
    record = (REPO / "docs" / "benchmarks.md").read_bytes()
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_run.py"), "--device", "cpu", "--threads", "1",
           "--data", str(data), "--work", str(tmp_path / "work"), "--out", str(out), "--config", "small",
           "--modes", "soft", "--precisions", "fp32", "--repeats", "1", "--min-seconds", "0", "--batches", "1",
           "--batch-size", "4", "--decode-sentences", "2", "--peak-size", "128", "--epoch-modes", "soft",
           "--epoch-steps", "2", "--budget-s", "240"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    soft = report["speed"]["fp32"]["results"]["small"]["soft"]
    assert soft["tokens_per_s"] > 0 and soft["device"] == "cpu" and soft["decode_sent_per_s"] > 0
    assert report["speed_sample"]["source"].startswith("Multi30k")  # no IWSLT'14 given: the study's val split
    epoch = report["multi30k_epoch"]["modes"]["soft"]
    assert epoch["steps"] == 2 and epoch["wall_s"] > 0 and epoch["valid_ppl"] > 1
    assert epoch["speedup_vs_study_cpu"] is None  # two updates are not the study's epoch
    assert "| soft |" in done.stdout and "first epoch" in done.stdout
    assert (REPO / "docs" / "benchmarks.md").read_bytes() == record
    assert not (tmp_path / "work" / "epoch" / "soft").exists()  # run directories are not kept by default

    saved = list(sys.path)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_run
        import speed
    finally:
        sys.path[:] = saved
    docs = tmp_path / "bench.md"
    docs.write_text("# B\n\n<!-- gpu_run.py table begin -->\nnot yet measured\n<!-- gpu_run.py table end -->\n\nrest\n",
                    encoding="utf-8")
    speed.write_markdown(docs, gpu_run.markdown(report), gpu_run.TABLE)
    text = docs.read_text(encoding="utf-8")
    assert "not yet measured" not in text and "| soft |" in text and text.endswith("rest\n")


def test_kmax_decoding_sweeps_k_and_recommends_one(tmp_path):
    """The K-max trade-off script on a tiny marginal run and a soft one: a row per K and the full marginal,
    BLEU and speed in each, a recommendation, the JSON and the markdown, and no docs written by default."""
    from varattn.cli import main

    from conftest import train_tiny

    train_tiny(tmp_path / "marginal", "marginal", 4)
    train_tiny(tmp_path / "soft", "soft", 2)
    assert main(["toy-data", "--out", str(tmp_path / "toy"), "--sizes", "40", "8", "8"]) == 0
    record = (REPO / "docs" / "benchmarks.md").read_bytes()
    script = str(REPO / "benchmarks" / "kmax_decoding.py")
    common = ["--src", str(tmp_path / "toy" / "test.src"), "--ref", str(tmp_path / "toy" / "test.tgt"),
              "--ks", "1,2", "--beam", "2", "--threads", "1"]
    done = subprocess.run([sys.executable, script, str(tmp_path / "marginal"), "--soft", str(tmp_path / "soft"),
                           *common, "--json", "--markdown", str(tmp_path / "bench.md")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (run,) = report["runs"]
    assert run["mode"] == "marginal" and [r["k"] for r in run["rows"]] == [1, 2, None]
    assert all(r["sent_per_s"] > 0 and 0 <= r["bleu"] <= 100 for r in run["rows"])
    full = run["rows"][-1]["bleu"]
    rec = run["recommendation"]
    assert rec["k"] is None or (rec["k"] in (1, 2) and rec["bleu"] >= full - 0.1)
    assert report["soft"]["mode"] == "soft" and report["sentences"] == 8
    table = (tmp_path / "bench.md").read_text(encoding="utf-8")
    assert "<!-- kmax_decoding.py table begin -->" in table and "| marginal | full |" in table
    assert (REPO / "docs" / "benchmarks.md").read_bytes() == record

    # a soft run is not an enumerating one: a one-line refusal
    refused = subprocess.run([sys.executable, script, str(tmp_path / "soft"), *common], capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode != 0 and "exact marginal" in refused.stderr
    assert (REPO / "docs" / "benchmarks.md").read_bytes() == record


def test_cpu_name_adds_family_and_model_from_the_first_processor(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from machine import cpu_name

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n\n"
                    "processor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: Other\n")
    assert cpu_name(info) == "AMD EPYC (family 25, model 17)"
    info.write_text("model name\t: Some ARM core\n")
    assert cpu_name(info) == "Some ARM core"
    assert cpu_name(tmp_path / "missing") != ""  # falls back to what platform knows
