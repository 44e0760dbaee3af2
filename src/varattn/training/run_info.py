"""``run.json`` and the files that define a run, checked before they are used.

``run.json`` names the file format (``"format": "varattn-run-1"``), the task (``"nmt"``, ``"vqa"``),
the training config, the task's model sizes, and since this version the SHA-256 of every other file
that defines the run (``"files"``: vocabularies, sentencepiece models), recorded when the run starts.
Loading or resuming a run checks them all first: a file that is missing or was changed stops the
command with one line naming it. Weights carry their own SHA-256 in ``meta.json``
(:mod:`varattn.checkpoint`). Runs written before ``"files"`` existed are checked by the task's loader
against the model sizes instead (a vocabulary must have as many entries as its embedding has rows).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from varattn.errors import VarattnError
from varattn.fileio import load_json

RUN_FILE = "run.json"
RUN_FORMAT = "varattn-run-1"
#: the key of ``run.json`` that holds ``{file name: sha256}``
FILES_KEY = "files"

Config = TypeVar("Config")


def read_run_info(run_dir: str | Path, task: str | None = None) -> dict[str, Any]:
    """``RUN_DIR/run.json``, checked: a JSON object of a known format with a config (and of ``task``)."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not run_dir.is_dir():
        raise VarattnError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise VarattnError(f"{run_dir} is not a varattn run directory (no {RUN_FILE})")
    info = load_json(path)
    if not isinstance(info, dict):
        raise VarattnError(f"{path} is corrupted (not a JSON object)")
    found = info.get("format", RUN_FORMAT)  # runs of the first releases did not name it
    if found != RUN_FORMAT:
        raise VarattnError(f"{path} has format {found!r}, which this varattn does not read (it reads "
                           f"{RUN_FORMAT!r}); use the varattn version that wrote the run")
    if not isinstance(info.get("config"), dict):
        raise VarattnError(f"{path} is corrupted (no config)")
    held = info.get("task", "nmt")
    if task is not None and held != task:
        from varattn.training.registry import find_task

        spec = find_task(str(held))
        hint = f"; use {spec.commands}" if spec is not None and spec.commands else ""
        raise VarattnError(f"{run_dir} holds a {str(held).upper()} run ({path} says task {held!r}), not a "
                           f"{task.upper()} run{hint}")
    return info


def parse_section(run_dir: str | Path, what: str, parse: Callable[[], Config]) -> Config:
    """``parse()`` of a section of ``run.json`` (the config, the model sizes); its errors name the file."""
    path = Path(run_dir) / RUN_FILE
    try:
        return parse()
    except VarattnError as exc:
        raise VarattnError(f"{path}: {what}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise VarattnError(f"{path} is corrupted ({what}: {exc!r})") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def record_files(run_dir: Path, names: Iterable[str]) -> dict[str, str]:
    """``{name: sha256}`` of the files ``names`` in ``run_dir`` (what ``run.json`` keeps under ``"files"``)."""
    try:
        return {name: sha256_file(run_dir / name) for name in sorted(names)}
    except OSError as exc:
        raise VarattnError(f"cannot read the run file {exc.filename}: {exc.strerror or exc}") from None


def check_files(run_dir: str | Path, info: dict[str, Any]) -> None:
    """Every file ``run.json`` records is there and unchanged; a one-line VarattnError naming it otherwise."""
    run_dir = Path(run_dir)
    files = info.get(FILES_KEY)
    if files is None:
        return  # an older run: its loader checks the sizes instead
    if not isinstance(files, dict):
        raise VarattnError(f"{run_dir / RUN_FILE} is corrupted ({FILES_KEY} is not an object)")
    for name, expected in files.items():
        path = run_dir / name
        if Path(name).name != name:
            raise VarattnError(f"{run_dir / RUN_FILE} is corrupted (file name {name!r})")
        if not path.is_file():
            raise VarattnError(f"{path} is missing: the run needs it (restore it from a copy of the run)")
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise VarattnError(f"cannot read {path}: {exc.strerror or exc}") from None
        if actual != expected:
            raise VarattnError(f"{path} was changed after training wrote it (its SHA-256 differs from the one in "
                               f"{RUN_FILE}); restore the original file or train a new run")


def check_size(path: Path, entries: int, expected: int, what: str) -> None:
    """A vocabulary file must have as many entries as the model's ``what`` has rows."""
    if entries != expected:
        raise VarattnError(f"{path} has {entries} entries but the {what} has {expected}: the file does not "
                           "belong to this run (restore the original file)")


__all__ = ["FILES_KEY", "RUN_FILE", "RUN_FORMAT", "check_files", "check_size", "parse_section", "read_run_info",
           "record_files"]
