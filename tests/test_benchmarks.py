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
