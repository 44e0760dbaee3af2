"""Shared test fixtures and helpers: the tiny configurations, trained tiny runs, the CLI helpers
and the thread fixtures.

The helpers are plain functions; a test module imports them with ``from conftest import ...``
(pytest puts ``tests/`` on ``sys.path`` for its root conftest).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from varattn.cli import main

#: The smallest model (every width 8) on 40 synthetic training pairs, on one thread: for tests
#: that only need *a* trained run (decoding, posteriors, the commands).
TINY = [
    "model.embed_dim=8", "model.encoder_hidden=8", "model.decoder_hidden=8", "model.attention_dim=8",
    "model.output_hidden=8", "model.inference_hidden=8", "synthetic_sizes=[40,8,8]", "valid_batch_size=8",
    "threads=1",
]
#: A slightly larger tiny model on 120 pairs, four to eight updates an epoch (batches of 16): for
#: tests of training itself (every mode trains, exact resume, a run that moves between devices).
SMALL = [
    "model.embed_dim=8", "model.encoder_hidden=8", "model.decoder_hidden=16", "model.attention_dim=8",
    "model.output_hidden=16", "model.inference_hidden=8", "synthetic_sizes=[120, 12, 12]", "batch_size=16",
    "valid_batch_size=5", "threads=1",
]

#: The smallest easy-VQA model on 160 training questions (needs the vqa extra): for tests that need *a* VQA run.
VQA_TINY = ["data.limit_train=160", "data.valid_images=4", "data.limit_test=30", "model.cnn_channels=[4, 4, 8]",
            "model.embed_dim=8", "model.question_hidden=8", "model.attention_dim=8", "model.output_hidden=16",
            "model.answer_embed_dim=4", "model.inference_hidden=8", "objective={}"]


def set_flags(settings: Iterable[str]) -> list[str]:
    """``--set=KEY=VALUE`` command-line flags for a list of settings."""
    return [f"--set={s}" for s in settings]


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``varattn ARGV`` in process (arguments may be paths or numbers): (status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    """The single ``error: ...`` line of a command's stderr; fails on a traceback or on more lines."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def need(module: str, extra: str) -> ModuleType:
    """Import ``module``, which the pip extra ``extra`` installs, or skip the calling test saying so.

    The suite must run with ``pip install -e .[test]`` alone: a test (or the part of one) that needs
    an extra calls this first, inside the test, so the module is never imported at collection.
    """
    return pytest.importorskip(module, reason=f"{module} is not installed (pip install 'varattn[{extra}]')")


def train_tiny(path: Path, mode: str, steps: int, settings: list[str] = TINY, **flags) -> dict:
    """Train a toy-config run of ``steps`` updates into ``path``; the training result."""
    from varattn.nmt.config import load_config
    from varattn.nmt.train import train

    cfg = load_config("toy", {"mode": mode, "max_steps": steps, **flags}, settings)
    return train(cfg, path, progress=False, tensorboard=False)


@pytest.fixture
def restore_threads():
    """Put back torch's thread count after a test (training with ``threads=1`` changes it)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread(restore_threads):
    """Run a test on one thread: tiny models run fastest so, and the machine is shared."""
    torch.set_num_threads(1)


class TinyRuns:
    """Trained toy-config runs, one per (mode, steps, settings), made on first use and then shared.

    ``runs(mode, steps=3, settings=TINY)`` is the run's directory; ``runs.result(path)`` what
    training returned for it. Tests share the directories: read them, never write into them.
    """

    def __init__(self, base: Path):
        self.base = base
        self._made: dict[tuple[str, int, tuple[str, ...]], Path] = {}
        self._results: dict[Path, dict] = {}

    def __call__(self, mode: str, steps: int = 3, settings: list[str] = TINY) -> Path:
        key = (mode, steps, tuple(settings))
        if key not in self._made:
            path = self.base / f"{mode}-{steps}-{len(self._made)}"
            threads = torch.get_num_threads()
            try:
                self._results[path] = train_tiny(path, mode, steps, settings)
            finally:
                torch.set_num_threads(threads)
            self._made[key] = path
        return self._made[key]

    def result(self, path: Path) -> dict:
        return self._results[path]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRuns:
    """The session's shared tiny runs: ``tiny_run(mode, steps=3, settings=TINY)`` (see :class:`TinyRuns`)."""
    return TinyRuns(tmp_path_factory.mktemp("tiny-runs"))
