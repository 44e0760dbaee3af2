"""Tests for varattn.nmt.plot and varattn.plot: PNG alignment heatmaps and training curves, metrics reading.

matplotlib is the ``plot`` extra: the tests that draw skip without it (``need``); the checks that come
before any drawing, and reading metrics, run either way.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from varattn.errors import VarattnError
from varattn.nmt.plot import plot_alignments
from varattn.plot import plot_metrics, read_metrics

from conftest import need

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pyplot():
    """matplotlib.pyplot, or skip the test: call it before anything is drawn."""
    return need("matplotlib.pyplot", "plot")


def _check_png(path, min_w=200, min_h=150, max_side=8000):
    assert path.exists()
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = need("matplotlib.image", "plot").imread(path)
    h, w = img.shape[:2]
    assert min_w <= w <= max_side and min_h <= h <= max_side, (w, h)
    # not a blank canvas: some pixels differ from the background
    assert float(np.asarray(img[..., :3]).std()) > 0.01
    return w, h


def test_matplotlib_imported_by_first_plot_on_agg(tmp_path):
    """Importing varattn.plot does not import matplotlib (an extra); the first plot selects Agg,
    even where the environment asks for another backend."""
    need("matplotlib", "plot")
    script = (
        "import sys\n"
        "from varattn.plot import plot_metrics\n"
        "assert 'matplotlib' not in sys.modules\n"
        f"plot_metrics([{{'step': 1, 'loss': 1.0}}, {{'step': 2, 'loss': 0.5}}], {str(tmp_path / 'c.png')!r})\n"
        "import matplotlib\n"
        "print(matplotlib.get_backend())\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().lower() == "agg"
    _check_png(tmp_path / "c.png")


def test_plot_alignments_writes_png(tmp_path):
    plt = _pyplot()
    rng = np.random.default_rng(0)
    src = ["das", "ist", "ein", "$5", "Haus", "."]
    tgt = ["this", "is", "a", "house", "."]
    prior = rng.dirichlet(np.ones(len(src)), size=len(tgt))
    posterior = torch.softmax(torch.randn(len(tgt), len(src)), dim=-1)
    out = plot_alignments(
        {"prior": prior, "posterior": posterior, "exact posterior": posterior.tolist()},
        src,
        tgt,
        tmp_path / "sub" / "align.png",
        title="example 0",
    )
    assert out == tmp_path / "sub" / "align.png"
    w, h = _check_png(out)
    assert w > h  # three panels side by side
    assert not plt.get_fignums()  # figure closed


def test_plot_alignments_thirty_tokens(tmp_path):
    _pyplot()
    n = 30
    src = [f"s{k}" for k in range(n)] + ["a_very_long_source_token_indeed"]
    tgt = [f"\u2581t{k}" for k in range(n)]
    probs = torch.softmax(torch.randn(len(tgt), len(src)), dim=-1)
    out = plot_alignments({"posterior": probs}, src, tgt, tmp_path / "big.png")
    w, h = _check_png(out, min_w=400, min_h=400, max_side=4000)
    assert h > 0.5 * w  # one panel of ~30x31 cells: roughly square, not squashed


def test_plot_alignments_shape_mismatch(tmp_path):
    with pytest.raises(VarattnError, match="shape"):
        plot_alignments({"prior": np.ones((3, 2))}, ["a", "b", "c"], ["x", "y"], tmp_path / "x.png")
    with pytest.raises(VarattnError):
        plot_alignments({}, ["a"], ["x"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    plt = sys.modules.get("matplotlib.pyplot")  # the checks come first, so this runs without matplotlib too
    assert plt is None or not plt.get_fignums()


def _records():
    recs = []
    for step in range(10, 110, 10):
        recs.append(
            {
                "step": step,
                "split": "train",
                "loss": 5.0 - step / 50,
                "ppl": 150.0 / step,
                "tokens_per_s": 900 + step,
                "note": "warmup" if step < 30 else None,
                "lr": 1e-3,
            }
        )
        if step % 50 == 0:
            recs.append(
                {
                    "step": step,
                    "split": "valid",
                    "ppl": 200.0 / step,
                    "elbo_ppl": 220.0 / step,
                    "epoch": step // 50,
                    "bleu": None,
                }
            )
    return recs


def test_plot_metrics_writes_png(tmp_path):
    plt = _pyplot()
    out = plot_metrics(_records(), tmp_path / "curves.png")
    _check_png(out)
    assert not plt.get_fignums()


def test_plot_metrics_panels_and_log_scale(tmp_path, monkeypatch):
    plt = _pyplot()
    seen = {}
    real_close = plt.close

    def spy_close(fig=None):
        if fig is not None and hasattr(fig, "axes"):
            seen["axes"] = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
        real_close(fig)

    monkeypatch.setattr(plt, "close", spy_close)
    plot_metrics(_records(), tmp_path / "curves.png")
    axes = seen["axes"]
    # every numeric key except step/epoch; "note" (str) and "bleu" (None) are skipped
    assert set(axes) == {"loss", "ppl", "tokens_per_s", "lr", "elbo_ppl"}
    assert axes["ppl"].get_yscale() == "log"
    assert axes["elbo_ppl"].get_yscale() == "log"
    assert axes["loss"].get_yscale() == "linear"
    # train and valid are separate lines in the ppl panel
    assert sorted(line.get_label() for line in axes["ppl"].get_lines()) == ["train", "valid"]
    assert [line.get_label() for line in axes["loss"].get_lines()] == ["train"]


def test_plot_metrics_errors(tmp_path):
    with pytest.raises(VarattnError, match="no metrics"):
        plot_metrics([], tmp_path / "m.png")
    with pytest.raises(VarattnError, match="numeric"):
        plot_metrics([{"step": 1, "split": "train", "note": "x"}], tmp_path / "m.png")


def test_read_metrics_skips_truncated_last_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    recs = _records()[:4]
    text = "".join(json.dumps(r) + "\n" for r in recs)
    path.write_text(text + '{"step": 50, "split": "tr', encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a logged warning (issue 24), not a Python warning
        with caplog.at_level(logging.WARNING, logger="varattn"):
            got = read_metrics(path)
    assert "metrics.jsonl:5: skipping the truncated last line" in caplog.text
    assert got == recs
    # and plots fine from the file
    _pyplot()
    _check_png(plot_metrics(got, tmp_path / "m.png"))


def test_read_metrics_complete_file_and_blank_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    recs = _records()[:3]
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n", encoding="utf-8")
    assert read_metrics(path) == recs
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    assert read_metrics(empty) == []


def test_read_metrics_corrupted_middle_line_raises(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n', encoding="utf-8")
    with pytest.raises(VarattnError, match=r"metrics\.jsonl:2:"):
        read_metrics(path)
    # a non-object line in the middle is corrupted too
    path.write_text('{"step": 1}\n[1, 2]\n{"step": 3}\n', encoding="utf-8")
    with pytest.raises(VarattnError, match=":2:"):
        read_metrics(path)


def test_read_metrics_missing_file(tmp_path):
    with pytest.raises(VarattnError, match="cannot read"):
        read_metrics(tmp_path / "missing.jsonl")
