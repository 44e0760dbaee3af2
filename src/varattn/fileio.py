"""Files written so that a crash leaves the old or the new content, never half of it; JSON read with one-line errors.

:func:`atomic_write_bytes` writes to a temporary file in the same directory, fsyncs it, renames it onto the
target with :func:`os.replace` and fsyncs the directory. :func:`save_json` / :func:`load_json` are the
JSON files of a run (``run.json``, vocabularies, ...) on top of it; a file that is missing, unreadable,
not UTF-8 or not JSON is a :class:`~varattn.errors.VarattnError` naming it. The checkpoint directories
(:mod:`varattn.checkpoint`) are built from the same pieces, and :func:`staged_directory` gives a prepared
dataset's directory the same all-or-nothing property.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from varattn.errors import VarattnError


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Flush a directory entry change (create / rename / delete) to disk, where the OS allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. Windows cannot open directories; renames there are as durable as it gets
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's content to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def require_new_directory(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path; a ``VarattnError`` if it exists and is not an empty directory (nothing is written)."""
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VarattnError(f"{out} already exists and is not an empty directory")
    return out


@contextlib.contextmanager
def staged_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh directory beside ``path`` to fill; when the block ends without an error it becomes ``path`` in one
    rename (an empty directory already at ``path`` is replaced), and on any error (Ctrl-C included) it is removed.

    So ``path`` either holds everything the block wrote or is as it was. The staging directory sits in the same
    parent (one file system, so the rename is atomic) under a hidden name, and is made with ``os.mkdir``, which
    keeps the user's umask (``tempfile.mkdtemp`` would leave the result readable by its owner only).
    """
    out = require_new_directory(path)
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = parent / f".{out.name}.{secrets.token_hex(4)}.part"
    os.mkdir(work)
    try:
        yield work
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    fsync_dir(parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new content.

    The bytes go to a temporary file in the same directory, which is flushed and fsynced, renamed
    onto ``path`` with :func:`os.replace`, and then the directory itself is fsynced.
    """
    path = Path(path)
    parent = path.parent
    try:
        # mode 0o666 and the process umask give the usual permissions (mkstemp would make it 0600)
        tmp = parent / f".tmp-{path.name}-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise VarattnError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise VarattnError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    fsync_dir(parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace ``path`` with ``text`` encoded as UTF-8 (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def dump_json(obj: Any, what: str) -> str:
    """``obj`` as indented UTF-8 JSON text; :class:`TypeError` naming ``what`` if it is not JSON-able."""
    try:
        return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot store {what} as JSON: {exc}") from exc


def save_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` to ``path`` as indented UTF-8 JSON.

    Raises :class:`TypeError` if ``obj`` is not JSON-serialisable and
    :class:`~varattn.errors.VarattnError` if the file cannot be written.
    """
    atomic_write_text(path, dump_json(obj, str(path)))


def load_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a missing, unreadable, non-UTF-8 or malformed file raises VarattnError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise VarattnError(f"file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise VarattnError(f"{path} is a directory, expected a JSON file") from exc
    except OSError as exc:
        raise VarattnError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_json(raw, path)


def parse_json(raw: bytes, path: Path) -> Any:
    """The JSON value of ``raw`` (the bytes of ``path``); bad UTF-8 or JSON is a VarattnError naming ``path``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VarattnError(f"{path} is not valid JSON (invalid UTF-8 at byte {exc.start})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise VarattnError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except RecursionError as exc:
        raise VarattnError(f"{path} is not valid JSON (nested too deeply)") from exc


__all__ = ["atomic_write_bytes", "atomic_write_text", "dump_json", "fsync_dir", "fsync_file", "load_json",
           "parse_json", "save_json", "umask"]
