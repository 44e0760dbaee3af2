"""The ``varattn`` command as a whole: its assembly from command modules, ``python -m varattn``,
a reader that goes away (``| head -1``), and ``evaluate``'s report of the pairs it left out."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import varattn
from varattn.cli import COMMAND_MODULES, build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")

SUBCOMMANDS = {"train", "evaluate", "translate", "bleu", "align", "plot", "plot-metrics", "toy-data", "prepare", "vqa",
               "serve"}


def _env() -> dict[str, str]:
    """The child runs the varattn these tests import, on one thread."""
    src = str(Path(varattn.__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run("marginal")


@pytest.fixture(scope="module")
def valid_lines(run_dir):
    from varattn.nmt.data import synthetic_pairs

    valid = synthetic_pairs(varattn.load(run_dir).config)["valid"]
    return [" ".join(s) for s in valid.src], [" ".join(t) for t in valid.tgt]


def test_every_subcommand_is_one_module_with_register_and_run():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == SUBCOMMANDS
    for name, sub in subparsers.choices.items():
        func = sub.get_default("func")
        module = importlib.import_module(func.__module__)
        assert func.__module__ in COMMAND_MODULES and func is module.run, name
        assert module.__name__.rsplit(".", 1)[1] == name.replace("-", "_")


def test_python_dash_m_varattn(tmp_path):
    """The module runs the command: its output, files and exit statuses (0, and 2 for a user error)."""
    env = _env()
    done = subprocess.run([sys.executable, "-m", "varattn", "toy-data", "--out", str(tmp_path / "toy"), "--sizes",
                           "4", "2", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote the synthetic corpus")
    assert len((tmp_path / "toy" / "train.src").read_text().splitlines()) == 4
    bad = subprocess.run([sys.executable, "-m", "varattn", "evaluate", str(tmp_path / "nothing")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")


@pytest.mark.parametrize("command", ["translate", "align"])
def test_a_closed_pipe_ends_the_command_quietly(command, run_dir, valid_lines, tmp_path):
    """Like ``varattn translate RUN | head -1``: the reader goes away after one line.

    The input arrives on stdin after the reader has gone, so the command must write into the
    closed pipe: it stops with status 0 and nothing on stderr.
    """
    src, tgt = valid_lines
    argv = [sys.executable, "-m", "varattn", command, str(run_dir), "--batch-size", "1"]
    if command == "translate":
        argv += ["--beam", "1"]
    else:
        (tmp_path / "tgt.txt").write_text("\n".join(tgt * 3) + "\n", encoding="utf-8")
        argv += ["--src", "-", "--tgt", str(tmp_path / "tgt.txt")]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        proc.stdin.write((src[0] + "\n").encode())
        proc.stdin.flush()
        first = proc.stdout.readline()
        proc.stdout.close()  # `head -1` exits
        try:
            proc.stdin.write(("\n".join((src * 3)[1:]) + "\n").encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        code = proc.wait(timeout=300)
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    assert first.endswith(b"\n")
    assert code == 0 and err == "", err


def _write_pairs(tmp_path, src: list[str], tgt: list[str]) -> list[str]:
    (tmp_path / "e.src").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "e.tgt").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return ["--src", str(tmp_path / "e.src"), "--tgt", str(tmp_path / "e.tgt")]


def test_evaluate_reports_the_pairs_it_skipped(run_dir, valid_lines, tmp_path, capsys):
    src, tgt = (list(side[:6]) for side in valid_lines)
    src[1] = src[4] = ""
    tgt[2] = ""  # an empty target is scored (just </s>), not skipped
    files = _write_pairs(tmp_path, src, tgt)
    assert main(["evaluate", str(run_dir), *files, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["skipped"] == {"empty_source": 2}
    assert record["sentences"] == 4
    assert main(["evaluate", str(run_dir), *files]) == 0
    assert "skipped 2 of 6 pairs: 2 with an empty source" in capsys.readouterr().out
    clean = _write_pairs(tmp_path, [src[0]], [tgt[0]])
    assert main(["evaluate", str(run_dir), *clean, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == {"empty_source": 0}
    assert main(["evaluate", str(run_dir), *clean]) == 0
    assert "skipped" not in capsys.readouterr().out


def test_evaluate_with_nothing_left_is_a_one_line_error(run_dir, tmp_path, capsys):
    files = _write_pairs(tmp_path, ["", ""], ["a", "b"])
    assert main(["evaluate", str(run_dir), *files]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "2 with an empty source" in err


@pytest.mark.parametrize(("flags", "needle"), [
    (["--beam", "0"], "--beam must be a positive integer, got 0"),
    (["--topk", "-1"], "--topk must be an integer >= 0 (0: every position), got -1"),
    (["--alpha", "-1"], "--alpha must be a finite number >= 0"),
    (["--eos-norm", "nan"], "--eos-norm must be a finite number >= 0"),
    (["--max-len-b", "inf"], "--max-len-b must be a finite number"),
])
def test_bad_decoding_options_stop_translate_before_writing(flags, needle, run_dir, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a b\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    assert main(["translate", str(run_dir), "--input", str(tmp_path / "in.txt"), "--output", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
    assert not out.exists()
