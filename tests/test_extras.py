"""Optional extras (tensorboard, plot, vqa): a missing one is a one-line error naming the extra."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from varattn.cli import main
from varattn.errors import VarattnError
from varattn.extras import EXTRAS, optional_import, summary_writer
from varattn.nmt.plot import plot_alignments
from varattn.plot import plot_metrics, read_metrics

from conftest import need

ROOT = Path(__file__).resolve().parents[1]
RECORDS = [{"step": 1, "split": "train", "loss": 2.0}, {"step": 2, "split": "train", "loss": 1.5}]


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Make matplotlib look uninstalled: a None entry in sys.modules makes its import fail."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)


def _assert_one_line(message: str, extra: str) -> None:
    assert "\n" not in message
    assert f"pip install 'varattn[{extra}]'" in message, message


def test_plot_without_matplotlib_is_one_line_error(no_matplotlib, tmp_path):
    out = tmp_path / "curves.png"
    with pytest.raises(VarattnError) as info:
        plot_metrics(RECORDS, out)
    _assert_one_line(str(info.value), "plot")
    assert "matplotlib" in str(info.value)
    assert not out.exists()
    with pytest.raises(VarattnError, match=re.escape("varattn[plot]")):
        plot_alignments({"prior": [[1.0]]}, ["a"], ["b"], tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


def test_read_metrics_needs_no_matplotlib(no_matplotlib, tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert read_metrics(path) == RECORDS


def test_cli_plot_metrics_without_matplotlib(no_matplotlib, tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = tmp_path / "curves.png"
    assert main(["plot-metrics", str(tmp_path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: plotting needs matplotlib"), err
    _assert_one_line(lines[0], "plot")
    assert not out.exists()


def test_summary_writer_without_tensorboard(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(VarattnError) as info:
        summary_writer(tmp_path / "tb")
    _assert_one_line(str(info.value), "tensorboard")
    assert not (tmp_path / "tb").exists()


def test_summary_writer_writes_events(tmp_path):
    need("tensorboard", "tensorboard")
    writer = summary_writer(tmp_path / "tb")
    writer.add_scalar("train/loss", 1.0, 1)
    writer.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_broken_install_is_not_reported_as_missing_extra(monkeypatch, tmp_path):
    """A package that is there but fails to import its own dependency: installing the extra would not help."""
    (tmp_path / "varattn_fake_extra.py").write_text("import varattn_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="varattn_no_such_dependency"):
        optional_import("varattn_fake_extra", "plot", "testing")
    monkeypatch.delitem(sys.modules, "varattn_fake_extra", raising=False)
    with pytest.raises(VarattnError, match=re.escape("varattn[plot]")):
        optional_import("varattn_no_such_package.sub", "plot", "testing")
    with pytest.raises(ValueError, match="unknown extra"):
        optional_import("json", "no-such-extra", "testing")


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()


def test_extras_match_pyproject():
    """varattn.extras.EXTRAS names the same distributions as pyproject.toml's extras, and `all` has every one."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, distributions in EXTRAS.items():
        assert sorted(_requirement_name(r) for r in extras[name]) == sorted(distributions), name
    assert extras["all"] == [f"varattn[{','.join(EXTRAS)}]"]
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    optional = {d for ds in EXTRAS.values() for d in ds}
    assert not optional & {_requirement_name(r) for r in dependencies}
