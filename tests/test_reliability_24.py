"""Issue 24: one writer per run directory, run files checked before use, clear errors, small fixes.

The concurrency tests start real ``varattn`` processes through a small driver that imports varattn,
says it is ready, and waits for a shared "go" file: the writers then start at the same moment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from varattn.errors import VarattnError
from varattn.training import rundir_lock

from conftest import SMALL, cli, one_line_error, set_flags

pytestmark = pytest.mark.usefixtures("restore_threads")

DRIVER = """\
import os, sys, time
from varattn.cli import main
go = sys.argv[1]
open(f"{go}.ready.{os.getpid()}", "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
sys.exit(main(sys.argv[2:]))
"""
TRAIN = ["train", "--no-progress", "--no-tensorboard"]
BUSY = "is being written by another training process"
#: a training that runs until it is stopped
ENDLESS = ["--mode", "soft", "--max-steps", "100000", "--epochs", "100000"]


def _env() -> dict:
    return {**os.environ, "PYTHONHASHSEED": "0"}


def _together(tmp_path: Path, *argvs: list[str], timeout: float = 240) -> list[tuple[int, int, str, str]]:
    """Run ``varattn ARGV`` for every argv at the same moment: ``(pid, status, stdout, stderr)`` each."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(driver), str(go), *map(str, argv)], env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in argvs]
    try:
        end = time.monotonic() + timeout
        while len(list(tmp_path.glob("go.ready.*"))) < len(procs):
            assert time.monotonic() < end and all(p.poll() is None for p in procs), "a driver did not start"
            time.sleep(0.01)
        go.touch()
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(p.pid, p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def _one_writer(results: list[tuple[int, int, str, str]]) -> tuple[int, str]:
    """Exactly one process finished (status 0); the others stopped with one line naming its pid."""
    codes = sorted(code for _, code, _, _ in results)
    assert codes == [0] + [2] * (len(results) - 1), [r[1:] for r in results]
    winner = next(pid for pid, code, _, _ in results if code == 0)
    for _, code, _, err in results:
        if code != 0:
            line = one_line_error(err)
            assert BUSY in line and f"pid {winner} " in line, line
    return winner, next(out for _, code, out, _ in results if code == 0)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _assert_written_once(run_dir: Path, last_step: int) -> None:
    """Every train and valid record once, in step order, up to ``last_step``."""
    records = _records(run_dir)
    keys = [(r["split"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)), keys
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == sorted(train_steps) and train_steps[-1] == last_step


# -- 1. one writer per run directory ----------------------------------------------------------------


def test_two_fresh_runs_into_one_directory_one_writes(tmp_path):
    run_dir = tmp_path / "run"
    argv = [*TRAIN, "--mode", "soft", "--out", run_dir, "--max-steps", 40, "--set=log_every=1", *set_flags(SMALL)]
    _, out = _one_writer(_together(tmp_path, argv, argv))
    assert "step 40" in out
    _assert_written_once(run_dir, 40)


def test_two_resumes_of_one_run_one_writes(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, _ = cli(capsys, *TRAIN, "--mode", "soft", "--out", run_dir, "--max-steps", 3, "--set=log_every=1",
                     *set_flags(SMALL))
    assert code == 0
    argv = [*TRAIN, "--resume", run_dir, "--max-steps", 40]
    _, out = _one_writer(_together(tmp_path, argv, argv))
    assert "step 40" in out
    _assert_written_once(run_dir, 40)


def _wait_until(predicate, proc: subprocess.Popen, limit: float = 120.0) -> None:
    end = time.monotonic() + limit
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()[1]}")
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def _holder_pid(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / rundir_lock.LOCK_FILE).read_text(encoding="utf-8"))["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_evaluate_reads_a_run_while_training_writes_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "varattn.cli", *TRAIN, *ENDLESS, "--out", str(run_dir),
                             "--set=eval_every=2", *set_flags(SMALL)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until(lambda: _holder_pid(run_dir) == proc.pid and (run_dir / "best").is_dir(), proc)
        evaluations = 0
        while evaluations < 6:
            code, out, err = cli(capsys, "evaluate", run_dir, "--json", "--device", "cpu")
            assert code == 0, err
            assert json.loads(out)["ppl"] > 0
            for checkpoint in ("best", "last"):
                code, _, err = cli(capsys, "translate", run_dir, "--checkpoint", checkpoint, "--input",
                                   _one_line(tmp_path))
                assert code == 0, err
            evaluations += 1
        assert proc.poll() is None  # the training still ran (and held the lock) all along
        with pytest.raises(VarattnError, match=f"{BUSY} \\(pid {proc.pid} "):
            rundir_lock.acquire(run_dir)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err and "cannot save" not in err


def _one_line(tmp_path: Path) -> Path:
    path = tmp_path / "one.src"
    path.write_text("a b c\n", encoding="utf-8")
    return path


def test_a_lock_left_by_a_killed_process_does_not_block_the_next_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = "import sys, time\nfrom varattn.training.rundir_lock import acquire\nlock = acquire(sys.argv[1])\n" \
           "print('locked', flush=True)\ntime.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(VarattnError, match=f"pid {proc.pid} on .*-c {run_dir}"):
            rundir_lock.acquire(run_dir)
    finally:
        proc.kill()
        proc.wait()
    lock = rundir_lock.acquire(run_dir)  # the holder is dead: the lock is free
    assert lock.held
    lock.release()


def test_a_killed_training_leaves_no_lock_behind(tmp_path, capsys):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "varattn.cli", *TRAIN, *ENDLESS, "--out", str(run_dir),
                             "--set=save_every=2", *set_flags(SMALL)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_until(lambda: (run_dir / "resume" / "meta.json").is_file(), proc)
    finally:
        proc.kill()
        proc.wait()
    assert _holder_pid(run_dir) == proc.pid  # the file stays, the lock went with the process
    code, out, err = cli(capsys, *TRAIN, "--resume", run_dir, "--max-steps", 6)
    assert code == 0 and "step 6" in out, err


def test_one_process_may_take_its_own_lock_twice(tmp_path):
    one = rundir_lock.acquire(tmp_path)
    two = rundir_lock.acquire(tmp_path)
    one.release()
    two.release()
    two.release()  # idempotent
    assert not one.held and not two.held


def test_a_run_that_fails_to_start_leaves_nothing_behind(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(capsys, *TRAIN, "--train", tmp_path / "missing", "--valid", tmp_path / "missing",
                       "--out", out, *set_flags(SMALL))
    assert code == 2 and not out.exists(), err


# -- 2. the VQA default does the same work everywhere -----------------------------------------------


def test_the_embedded_vqa_default_has_no_time_limit():
    from varattn.vqa.config import load_config

    cfg = load_config("easy")
    assert cfg.max_minutes is None and cfg.max_steps is None and cfg.epochs == 6


# -- 3. run files are checked before use ------------------------------------------------------------


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of a trained tiny run (var-enum), to damage."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run("var-enum"), copy)
    return copy


def _edit_json(path: Path, change) -> None:
    info = json.loads(path.read_text(encoding="utf-8"))
    change(info)
    path.write_text(json.dumps(info), encoding="utf-8")


def test_run_json_records_every_run_file(run_copy):
    files = json.loads((run_copy / "run.json").read_text(encoding="utf-8"))["files"]
    assert sorted(files) == ["vocab.src.txt", "vocab.tgt.txt"]


def test_a_cut_vocabulary_is_refused(run_copy, capsys):
    vocab = run_copy / "vocab.tgt.txt"
    vocab.write_text("".join(vocab.read_text(encoding="utf-8").splitlines(keepends=True)[:5]), encoding="utf-8")
    for argv in (["evaluate", run_copy], ["train", "--resume", run_copy, "--max-steps", 9, "--no-tensorboard"]):
        code, _, err = cli(capsys, *argv)
        line = one_line_error(err)
        assert code == 2 and "vocab.tgt.txt" in line and "changed" in line, line


def test_a_vocabulary_edited_in_place_is_refused(run_copy, capsys):
    vocab = run_copy / "vocab.src.txt"
    lines = vocab.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[5], lines[6] = lines[6], lines[5]  # same size, other words
    vocab.write_text("".join(lines), encoding="utf-8")
    code, _, err = cli(capsys, "translate", run_copy, "--input", _one_line(run_copy.parent))
    assert code == 2 and "vocab.src.txt" in one_line_error(err)


def test_an_older_run_checks_its_vocabularies_against_the_model(run_copy, capsys):
    _edit_json(run_copy / "run.json", lambda info: info.pop("files"))
    vocab = run_copy / "vocab.tgt.txt"
    vocab.write_text("".join(vocab.read_text(encoding="utf-8").splitlines(keepends=True)[:5]), encoding="utf-8")
    code, _, err = cli(capsys, "evaluate", run_copy)
    line = one_line_error(err)
    assert code == 2 and "vocab.tgt.txt has 5 entries" in line, line


def test_weights_of_another_shape_are_one_line(run_copy, capsys):
    _edit_json(run_copy / "run.json", lambda info: info["model"].update(embed_dim=12))
    code, _, err = cli(capsys, "evaluate", run_copy)
    assert code == 2 and "does not match its run.json" in one_line_error(err)


# -- 7. errors that say what is wrong ----------------------------------------------------------------


def _fake_vqa_run(tmp_path: Path) -> Path:
    run = tmp_path / "vqa-run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"format": "varattn-run-1", "task": "vqa",
                                              "config": {"mode": "var-enum", "data": {"source": "easy-vqa"}},
                                              "model": {}}), encoding="utf-8")
    return run


@pytest.mark.parametrize("argv", [["translate", "{run}"], ["plot", "{run}", "--src", "a", "--tgt", "b", "-o", "x.png"]])
def test_nmt_commands_on_a_vqa_run_say_which_command_to_use(tmp_path, capsys, argv):
    run = _fake_vqa_run(tmp_path)
    code, _, err = cli(capsys, *[str(a).format(run=run) for a in argv])
    line = one_line_error(err)
    assert code == 2 and "holds a VQA run" in line and "varattn evaluate, vqa answer or vqa plot" in line, line


@pytest.mark.parametrize("argv", [["evaluate", "{run}"], ["train", "--resume", "{run}"]])
def test_the_shared_commands_take_a_vqa_run_to_the_vqa_task(tmp_path, capsys, argv):
    """``evaluate`` and ``train --resume`` serve every task: on this (fake, incomplete) VQA run they go on to
    the VQA task's own checks instead of refusing it."""
    run = _fake_vqa_run(tmp_path)
    code, _, err = cli(capsys, *[str(a).format(run=run) for a in argv])
    line = one_line_error(err)
    assert code == 2 and "holds a" not in line and ("vocab.words.txt" in line or "resume/" in line), line


def test_vqa_commands_on_a_translation_run_say_which_command_to_use(run_copy, capsys):
    code, _, err = cli(capsys, "vqa", "answer", run_copy, "--image", "x.png", "--question", "what?")
    line = one_line_error(err)
    assert code == 2 and "holds a NMT run" in line and "varattn evaluate" in line, line


def test_a_run_without_resume_but_with_weights_says_what_they_are_good_for(run_copy, capsys):
    shutil.rmtree(run_copy / "resume")
    code, _, err = cli(capsys, "train", "--resume", run_copy, "--max-steps", 9, "--no-tensorboard")
    line = one_line_error(err)
    assert code == 2 and "no resume/ checkpoint" in line and "best/ and last/ hold trained weights" in line
    assert "delete it" not in line


def test_an_unknown_run_format_is_refused(run_copy, capsys):
    _edit_json(run_copy / "run.json", lambda info: info.update(format="varattn-run-7"))
    for argv in (["evaluate", run_copy], ["train", "--resume", run_copy, "--max-steps", 9]):
        code, _, err = cli(capsys, *argv)
        line = one_line_error(err)
        assert code == 2 and "run.json has format 'varattn-run-7'" in line, line


def test_an_unknown_mode_in_run_json_names_the_file(run_copy, capsys):
    _edit_json(run_copy / "run.json", lambda info: info["config"].update(mode="var-bogus"))
    code, _, err = cli(capsys, "evaluate", run_copy)
    line = one_line_error(err)
    assert code == 2 and str(run_copy / "run.json") in line and "var-bogus" in line, line


# -- 4. plots that cannot be written ------------------------------------------------------------------


def test_plots_that_cannot_be_written_are_one_line(run_copy, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    target = blocker / "out.png"  # its folder is a file: no write can succeed, whoever runs the test
    for argv in (["plot", run_copy, "--src", "a b", "--tgt", "c d", "-o", target],
                 ["plot-metrics", run_copy, "-o", target]):
        code, _, err = cli(capsys, *argv)
        line = one_line_error(err)
        assert code == 2 and f"cannot write {target}" in line, line


# -- 5. gold links outside the sentence ---------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "gold", "shown"), [("pharaoh", "0-0 99-99", "99-99"), ("talp", "1-1 6p2", "6-2")])
def test_gold_links_outside_the_sentence_are_refused(run_copy, tmp_path, capsys, fmt, gold, shown):
    src, tgt, golds = tmp_path / "s.txt", tmp_path / "t.txt", tmp_path / "gold.txt"
    src.write_text("a b c d e\na b\n", encoding="utf-8")
    tgt.write_text("v w x y z\nv w\n", encoding="utf-8")
    golds.write_text(f"0-0\n{gold}\n".replace("0-0\n", "1-1\n" if fmt == "talp" else "0-0\n", 1), encoding="utf-8")
    code, _, err = cli(capsys, "align", run_copy, "--src", src, "--tgt", tgt, "--gold", golds, "--gold-format", fmt,
                       "-o", tmp_path / "links.txt")
    line = one_line_error(err)
    assert code == 2 and f"{golds}:2" in line and shown in line and "outside" in line, line


# -- 9. small things ----------------------------------------------------------------------------------


def test_weights_follow_the_umask(tmp_path):
    import torch

    from varattn.checkpoint import save_checkpoint

    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "ck", {"x": torch.zeros(2)}, {})
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "ck").iterdir()}
    assert modes == {"weights.safetensors": 0o644, "meta.json": 0o644}


def test_varattn_version(capsys):
    import varattn
    from varattn.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"varattn {varattn.__version__}"


def test_only_rank_0_prints_ddps_unused_parameter_warning():
    import warnings

    from varattn.training.distributed import silence_repeated_warnings

    text = "find_unused_parameters=True was specified in DDP constructor, but did not find any unused parameters"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_repeated_warnings()  # what ranks > 0 do when they join
        warnings.warn(text, UserWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else"]


def test_vqa_region_bars_have_whole_numbered_ticks(tmp_path, monkeypatch):
    import numpy as np

    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    import matplotlib.pyplot as plt

    from varattn.vqa.plot import plot_regions
    from varattn.vqa.run import Regions

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    probs = np.full(16, 1 / 16)  # easy-VQA's 4 x 4 grid: matplotlib's own ticks would be 0, 2.5, 5, ...
    plot_regions(Regions(probs, probs, probs, "yes"), tmp_path / "r.png", question="is it?")
    try:
        ticks = [t for ax in figures[0].axes for t in ax.get_xticks() if 0 <= t <= 15]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    finally:
        close("all")


def test_toy_data_files_train_as_documented(tmp_path, capsys):
    code, _, err = cli(capsys, "toy-data", "--out", tmp_path / "toy", "--sizes", 40, 8, 8)
    assert code == 0, err
    code, out, err = cli(capsys, *TRAIN, "--train", tmp_path / "toy" / "train", "--valid", tmp_path / "toy" / "valid",
                         "--out", tmp_path / "run", "--max-steps", 2, *set_flags(SMALL))
    assert code == 0 and "step 2" in out, err


# -- 6. input the model does not know ------------------------------------------------------------------


def test_unknown_source_words_are_counted_on_stderr(run_copy, tmp_path, capsys, caplog):
    src = tmp_path / "s.txt"
    src.write_text("qqq rrr sss\n\n", encoding="utf-8")
    code, out, err = cli(capsys, "translate", run_copy, "--input", src)
    assert code == 0 and len(out.splitlines()) == 2
    assert "line 1: all 3 source tokens are unknown" in caplog.text and "3 of 3 source tokens" in caplog.text


def test_align_counts_unknown_tokens_in_its_json(run_copy, tmp_path, capsys, caplog):
    src, tgt = tmp_path / "s.txt", tmp_path / "t.txt"
    src.write_text("qqq rrr\n", encoding="utf-8")
    tgt.write_text("zzz\n", encoding="utf-8")
    code, out, err = cli(capsys, "align", run_copy, "--src", src, "--tgt", tgt, "--json")
    record = json.loads(out)
    assert code == 0 and record["src_unknown"] == 2 and record["tgt_unknown"] == 1
    assert "2 of 2 source tokens" in caplog.text and "1 of 1 target tokens" in caplog.text


def test_plot_says_when_its_words_are_unknown(run_copy, tmp_path, capsys, caplog):
    pytest.importorskip("matplotlib")
    code, _, err = cli(capsys, "plot", run_copy, "--src", "qqq rrr", "--tgt", "zzz", "-o", tmp_path / "p.png")
    assert code == 0 and "2 of 2 source tokens" in caplog.text and "1 of 1 target tokens" in caplog.text, err


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory) -> Path:
    """A tiny VQA run on generated region features (two updates)."""
    pytest.importorskip("h5py")
    from test_vqa_data import _train_args, write_h5

    from varattn.cli import main

    base = tmp_path_factory.mktemp("vqa")
    write_h5(base / "f.h5")
    assert main(_train_args(base, base / "f.h5")) == 0
    return base / "run"


def test_vqa_answer_refuses_an_empty_question_and_counts_unknown_words(vqa_run, capsys, caplog):
    capsys.readouterr()
    for question in ("", "   ?? "):
        code, _, err = cli(capsys, "vqa", "answer", vqa_run, "--image-id", 102, "--question", question)
        assert code == 2 and "has no words" in one_line_error(err)
    code, out, err = cli(capsys, "vqa", "answer", vqa_run, "--image-id", 102, "--question", "zork blorp?", "--json")
    answers = json.loads(out)
    assert code == 0 and answers[0]["unknown_words"] == 2 and answers[0]["question_words"] == 2
    assert "2 of the question's 2 words" in caplog.text, err


def test_translation_commands_on_a_real_vqa_run_point_to_vqa(vqa_run, capsys):
    code, _, err = cli(capsys, "translate", vqa_run)
    assert code == 2 and "holds a VQA run" in one_line_error(err)
    code, out, _ = cli(capsys, "evaluate", vqa_run, "--json", "--limit", 5)  # the shared command evaluates it
    assert code == 0 and json.loads(out)["questions"] == 5
