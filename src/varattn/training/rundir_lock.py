"""One writer per run directory: an advisory lock on ``RUN_DIR/train.lock``.

``varattn train`` (a fresh run or ``--resume``) takes the lock before it writes anything in the run
directory and keeps it until training ends. A second writer finds it taken and stops with a one-line
error naming the holder (its pid, host and command line, which the holder writes into the lock file).
Readers (``evaluate``, ``translate``, ``align``, ``plot``, ``varattn.load``) never take it.

The lock is ``fcntl.flock`` on an open file: the operating system drops it when the process ends in
any way (``kill -9`` included), so a crashed run never blocks the next one; the stale holder text
left in the file is only ever shown while someone actually holds the lock. Within one process the
lock is shared: a second :func:`acquire` of a directory this process already holds succeeds (it
counts), since one process is one writer. Under torchrun only rank 0 takes it.

Where ``fcntl`` does not exist (Windows) the lock does nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from varattn.errors import VarattnError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = "train.lock"
#: how long a second writer waits for the holder's description before naming it unknown
_HOLDER_WAIT_S = 1.0
_MAX_COMMAND = 300

#: this process's locks: (device, inode) of the lock file -> [fd, count]
_held: dict[tuple[int, int], list[int]] = {}


def holder_text() -> str:
    """What this process writes into a lock it takes: pid, host and command line (JSON)."""
    argv = list(sys.argv) or ["python"]
    program = os.path.basename(argv[0])
    argv[0] = "varattn" if program in ("cli.py", "__main__.py") else program or "python"
    command = shlex.join(argv)
    if len(command) > _MAX_COMMAND:
        command = command[: _MAX_COMMAND - 3] + "..."
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command}) + "\n"


def describe_holder(text: str) -> str:
    """The holder as the error message names it, from the lock file's text."""
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}: {info['command']}"
    except (ValueError, TypeError, KeyError):
        return "a process that has not said which (it may just be starting)"


class RunDirLock:
    """This process's hold on a run directory; :meth:`release` (or the end of the process) lets go."""

    def __init__(self, run_dir: Path, key: tuple[int, int] | None):
        self.run_dir, self._key = run_dir, key

    @property
    def held(self) -> bool:
        return self._key is not None

    def release(self) -> None:
        """Let go of this hold (the file lock goes when the process's last hold does); idempotent."""
        key, self._key = self._key, None
        if key is None or key not in _held:
            return
        entry = _held[key]
        entry[1] -= 1
        if entry[1] <= 0:
            del _held[key]
            os.close(entry[0])  # closing the descriptor drops the flock

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _read_all(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _holder_of(fd: int) -> str:
    """The holder's description; it writes it just after locking, so wait a moment for it."""
    end = time.monotonic() + _HOLDER_WAIT_S
    while True:
        text = _read_all(fd)
        if text.strip() or time.monotonic() > end:
            return describe_holder(text)
        time.sleep(0.05)


def acquire(run_dir: str | os.PathLike[str]) -> RunDirLock:
    """Take the writer's lock of the existing directory ``run_dir``, or a one-line VarattnError naming its holder."""
    run_dir = Path(run_dir)
    if fcntl is None:  # pragma: no cover - Windows
        return RunDirLock(run_dir, None)
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise VarattnError(f"cannot lock the run directory {run_dir} ({path}: {exc.strerror or exc})") from None
    stat = os.fstat(fd)
    key = (stat.st_dev, stat.st_ino)
    if key in _held:  # this process holds it already
        os.close(fd)
        _held[key][1] += 1
        return RunDirLock(run_dir, key)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder_of(fd)
        os.close(fd)
        raise VarattnError(f"{run_dir} is being written by another training process ({holder}); wait for it to "
                           "finish or stop it, or train into another --out") from None
    except OSError as exc:
        os.close(fd)
        raise VarattnError(f"cannot lock the run directory {run_dir} ({path}: {exc.strerror or exc})") from None
    text = holder_text().encode("utf-8")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
    except OSError as exc:
        os.close(fd)
        raise VarattnError(f"cannot write {path}: {exc.strerror or exc}") from None
    _held[key] = [fd, 1]
    return RunDirLock(run_dir, key)


__all__ = ["LOCK_FILE", "RunDirLock", "acquire", "describe_holder", "holder_text"]
