"""Checkpoint directories that never unpickle anything, written crash-safely.

A checkpoint is a *directory* holding two files:

``weights.safetensors``
    Every tensor, in the safetensors format (a JSON header followed by raw little-endian tensor
    bytes). Parsing it cannot run code.
``meta.json``
    A JSON object ``{"format": "varattn-checkpoint-1", "weights_sha256": ..., "weights_bytes": ...,
    "tensor_names": [...], "meta": {...}}``. ``meta`` is the caller's JSON-able dictionary
    (configuration, step counters, the skeleton of :mod:`varattn.training.nested_state`, ...); the
    sha256 and byte count of ``weights.safetensors`` are checked on load to detect truncated or
    corrupted files, and ``tensor_names`` keeps the order the tensors were given in.

A checkpoint directory is built complete under the temporary sibling ``.tmp-<name>-<pid>`` and then
swapped in with two renames: the old ``<name>`` becomes the backup ``.bak-<name>``, the new one becomes
``<name>``, and the backup is deleted. Whatever moment the process dies at, either ``<name>`` or
``.bak-<name>`` is a complete checkpoint; :func:`load_checkpoint` (through :func:`recover`) moves the
backup back into place when ``<name>`` is missing. One process at a time may write a given checkpoint
directory. Single files are written with :mod:`varattn.fileio`.

:func:`load_weights` loads a checkpoint into a model. Nothing in this module calls :func:`torch.load` or
the :mod:`pickle` module. Files that look like pickles (or ``torch.save`` zip archives) are refused with
a :class:`~varattn.errors.VarattnError`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save_file as _st_save_file

from varattn.errors import VarattnError
from varattn.fileio import dump_json, fsync_dir, fsync_file, parse_json, umask

__all__ = [
    "FORMAT",
    "WEIGHTS_NAME",
    "META_NAME",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "recover",
    "backup_path",
]

FORMAT = "varattn-checkpoint-1"
WEIGHTS_NAME = "weights.safetensors"
META_NAME = "meta.json"

_CHUNK = 1 << 20
#: how often a reader or writer tries again when the other swaps the checkpoint under it
_SWAP_TRIES = 5
_PICKLE_REFUSED = (
    "{path} looks like a pickled PyTorch checkpoint (torch.save / pickle); pickled checkpoints are "
    "refused for safety because loading them can run arbitrary code -- save checkpoints with "
    "varattn (safetensors + meta.json) instead"
)


def backup_path(directory: str | os.PathLike[str]) -> Path:
    """Where the previous checkpoint lives while :func:`save_checkpoint` swaps a new one in."""
    directory = Path(directory)
    return directory.parent / f".bak-{directory.name}"


def _tmp_path(directory: Path, pid: int) -> Path:
    return directory.parent / f".tmp-{directory.name}-{pid}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or we cannot tell: leave it alone
    return True


def _remove_stale_tmp(directory: Path) -> None:
    """Delete ``.tmp-<name>-<pid>`` build directories left behind by processes that no longer run."""
    prefix = f".tmp-{directory.name}-"
    try:
        entries = list(directory.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix) :]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)


def recover(directory: str | os.PathLike[str]) -> Path | None:
    """Repair the state left by a crash inside :func:`save_checkpoint`; return where the checkpoint is.

    * ``directory`` exists: it is complete (it only ever appears through a rename of a fully written
      build directory); it is returned.
    * ``directory`` is missing but its backup ``.bak-<name>`` exists: the process died between the two
      renames. The backup is renamed back to ``directory`` (or, if that rename is impossible, e.g. on a
      read-only file system, the backup path itself is returned).
    * neither exists: ``None``.

    Build directories ``.tmp-<name>-<pid>`` of processes that are no longer running are deleted.
    """
    directory = Path(directory)
    backup = backup_path(directory)
    if not os.path.lexists(directory) and backup.is_dir():
        try:
            os.rename(backup, directory)
        except OSError:
            return backup
        fsync_dir(directory.parent)
    if os.path.lexists(directory):
        with contextlib.suppress(OSError):
            _remove_stale_tmp(directory)
        return directory
    return None


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, CPU, contiguous tensors; tensors sharing storage with an earlier one are cloned."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of str to torch.Tensor, got {type(tensors).__name__}")
    out: dict[str, torch.Tensor] = {}
    seen_storage: set[tuple[str, int]] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.is_sparse or t.layout != torch.strided:
            raise TypeError(f"tensor {name!r} has layout {t.layout}; only dense tensors can be saved")
        if not t.is_contiguous():
            t = t.contiguous()
        if t.numel() > 0:
            key = (str(t.device), t.untyped_storage().data_ptr())
            if key in seen_storage:
                t = t.clone()
            else:
                seen_storage.add(key)
        out[name] = t
    return out


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def save_checkpoint(
    directory: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> Path:
    """Write ``tensors`` and ``meta`` as the checkpoint directory ``directory``, atomically.

    ``directory/weights.safetensors`` receives ``tensors`` (moved to CPU, made contiguous; tensors that
    share storage are cloned so each is stored on its own). ``directory/meta.json`` receives
    ``{"format": "varattn-checkpoint-1", "weights_sha256": ..., "weights_bytes": ...,
    "tensor_names": [names in order], "meta": meta}``;
    ``meta`` must be JSON-serialisable (tuples come back as lists). Returns ``directory`` as a Path.

    The new checkpoint is built and fsynced under ``.tmp-<name>-<pid>`` next to ``directory``; then an
    existing ``directory`` is renamed to ``.bak-<name>``, the build directory is renamed to
    ``directory`` and the backup is deleted. See the module docstring for the crash guarantees.
    """
    directory = Path(directory)
    if not directory.name or directory.name in (".", ".."):
        raise VarattnError(f"cannot save a checkpoint to {directory}: give a directory name")
    parent = directory.parent
    if not parent.is_dir():
        raise VarattnError(f"cannot save checkpoint {directory}: directory {parent} does not exist")
    if os.path.lexists(directory) and not directory.is_dir():
        raise VarattnError(f"cannot save checkpoint {directory}: a file with that name exists")
    prepared = _prepare_tensors(tensors)
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a mapping, got {type(meta).__name__}")
    user_meta = dict(meta)
    dump_json(user_meta, f"the metadata of checkpoint {directory}")  # fail before touching the disk

    # A crash may have left only the backup: put it back first so it is never deleted below.
    recover(directory)

    tmp = _tmp_path(directory, os.getpid())
    backup = backup_path(directory)
    try:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp)
        tmp.mkdir()
        weights = tmp / WEIGHTS_NAME
        _st_save_file(prepared, str(weights))
        os.chmod(weights, 0o666 & ~umask())  # safetensors creates it 0600; follow the umask like every other file
        fsync_file(weights)
        sha, size = _sha256_file(weights)
        record = {
            "format": FORMAT,
            "weights_sha256": sha,
            "weights_bytes": size,
            "tensor_names": list(prepared),
            "meta": user_meta,
        }
        meta_path = tmp / META_NAME
        with open(meta_path, "w", encoding="utf-8") as fh:
            fh.write(dump_json(record, f"the metadata of checkpoint {directory}"))
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
        fsync_dir(parent)

        _swap_in(tmp, directory, backup)
    except OSError as exc:
        with contextlib.suppress(OSError):
            if tmp.is_dir():
                shutil.rmtree(tmp)
        recover(directory)
        raise VarattnError(f"cannot save checkpoint {directory}: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            if tmp.is_dir():
                shutil.rmtree(tmp)
        raise
    if os.path.lexists(backup):
        with contextlib.suppress(OSError):
            shutil.rmtree(backup)
            fsync_dir(parent)
    return directory


def _swap_in(tmp: Path, directory: Path, backup: Path) -> None:
    """``directory`` -> ``backup``, ``tmp`` -> ``directory``.

    A reader that finds only the backup between the two renames puts it back (:func:`recover`); then the
    second rename fails because ``directory`` exists again, and the swap is simply done once more.
    """
    for attempt in range(_SWAP_TRIES):
        if directory.is_dir():
            if os.path.lexists(backup):
                shutil.rmtree(backup)  # stale: `directory` is complete, so this one is not needed
            os.rename(directory, backup)
            fsync_dir(directory.parent)
        try:
            os.rename(tmp, directory)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and attempt + 1 < _SWAP_TRIES:
                continue  # a reader restored the backup meanwhile
            raise
        fsync_dir(directory.parent)
        return


def _open_or_none(path: Path):
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        return None


def _open_files(directory: Path):
    """``(where, weights handle, meta handle)`` of one and the same version of a checkpoint.

    A writer may swap a new version in at any moment; the two files are opened between two looks at the
    directory, and again if it changed in between. Open files stay readable whatever the writer renames
    or deletes afterwards. A handle is None where its file is missing; ``where`` is None without a checkpoint.
    """
    for _ in range(_SWAP_TRIES):
        where = directory if directory.is_dir() else recover(directory)
        if where is None:
            return None, None, None
        try:
            before = os.stat(where).st_ino
        except FileNotFoundError:
            continue
        weights = _open_or_none(where / WEIGHTS_NAME)
        meta = _open_or_none(where / META_NAME)
        try:
            same = os.stat(where).st_ino == before
        except FileNotFoundError:
            same = False
        if same:
            return where, weights, meta
        for handle in (weights, meta):
            if handle is not None:
                handle.close()
    raise VarattnError(f"checkpoint {directory} kept changing while it was read; try again")


def _looks_pickled(head: bytes) -> bool:
    """Pickle protocol >= 2 starts with 0x80; ``torch.save`` (since 1.6) writes a zip archive.

    A safetensors file starts with its header's length (8 bytes, little-endian: the first byte is
    0x80 for one header size in 256) followed by the JSON header's ``{``: such a file is not a pickle.
    """
    if head[8:9] == b"{":
        return False
    return head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"


def _read_head(path: Path, n: int = 9) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def load_checkpoint(directory: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; return ``(tensors, meta)``.

    ``tensors`` come from ``directory/weights.safetensors`` (on CPU), ``meta`` is the caller's
    dictionary from ``directory/meta.json``. If ``directory`` is missing but a backup left by a crash
    exists, it is recovered first (:func:`recover`).

    Raises :class:`~varattn.errors.VarattnError` when there is no checkpoint, when a file is a pickle
    or ``torch.save`` archive (refused: loading those can execute code), when ``meta.json`` is not
    valid JSON or not a varattn checkpoint, and when the weights are truncated or corrupted (sha256
    mismatch or an unparsable safetensors file). No code from the files is ever executed.
    """
    directory = Path(directory)
    if directory.is_file():
        try:
            head = _read_head(directory)
        except OSError as exc:
            raise VarattnError(f"cannot read {directory}: {exc.strerror or exc}") from exc
        if _looks_pickled(head):
            raise VarattnError(_PICKLE_REFUSED.format(path=directory))
        raise VarattnError(
            f"{directory} is a file; a varattn checkpoint is a directory with {WEIGHTS_NAME} and {META_NAME}"
        )
    try:
        where, weights_file, meta_file = _open_files(directory)
    except IsADirectoryError as exc:
        raise VarattnError(f"checkpoint {directory} is corrupted ({Path(exc.filename).name} is a directory)") from exc
    except OSError as exc:
        raise VarattnError(f"cannot read {exc.filename}: {exc.strerror or exc}") from exc
    if where is None:
        raise VarattnError(f"no checkpoint at {directory}")
    with contextlib.ExitStack() as stack:
        for handle in (weights_file, meta_file):
            if handle is not None:
                stack.enter_context(handle)
        return _read_checkpoint(directory, where, weights_file, meta_file)


def _read_checkpoint(directory: Path, where: Path, weights_file, meta_file) -> tuple[dict[str, torch.Tensor], dict]:
    """The checks and parsing of :func:`load_checkpoint`, from the opened files."""
    weights = where / WEIGHTS_NAME
    meta_path = where / META_NAME

    # The pickle check comes before anything else reads the weights.
    if weights_file is None:
        raise VarattnError(f"no checkpoint at {directory} (missing {WEIGHTS_NAME})")
    try:
        head = weights_file.read(9)
    except IsADirectoryError as exc:
        raise VarattnError(f"checkpoint {directory} is corrupted ({WEIGHTS_NAME} is a directory)") from exc
    except OSError as exc:
        raise VarattnError(f"cannot read {weights}: {exc.strerror or exc}") from exc
    if _looks_pickled(head):
        raise VarattnError(_PICKLE_REFUSED.format(path=weights))

    if meta_file is None or not meta_path.is_file():
        raise VarattnError(f"no checkpoint at {directory} (missing {META_NAME})")
    try:
        raw_meta = meta_file.read()
    except OSError as exc:
        raise VarattnError(f"cannot read {meta_path}: {exc.strerror or exc}") from exc
    record = parse_json(raw_meta, meta_path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise VarattnError(f"{meta_path} is not a varattn checkpoint (format {found!r}, expected {FORMAT!r})")
    expected_sha = record.get("weights_sha256")
    expected_size = record.get("weights_bytes")
    user_meta = record.get("meta")
    if not (isinstance(expected_sha, str) and isinstance(expected_size, int) and isinstance(user_meta, dict)):
        raise VarattnError(f"checkpoint {directory} is corrupted ({META_NAME} lacks weights_sha256/meta)")

    try:
        weights_file.seek(0)
        data = weights_file.read()
    except OSError as exc:
        raise VarattnError(f"cannot read {weights}: {exc.strerror or exc}") from exc
    if len(data) != expected_size:
        raise VarattnError(
            f"checkpoint {directory} is corrupted ({WEIGHTS_NAME} has {len(data)} bytes, "
            f"expected {expected_size}; truncated?)"
        )
    actual_sha = hashlib.sha256(data).hexdigest()
    if actual_sha != expected_sha:
        raise VarattnError(f"checkpoint {directory} is corrupted ({WEIGHTS_NAME} sha256 mismatch)")
    try:
        tensors = _st_load(data)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # SafetensorError, or a Rust panic (a BaseException) on odd input
        raise VarattnError(
            f"checkpoint {directory} is corrupted ({WEIGHTS_NAME} is not a valid safetensors file: {exc})"
        ) from exc
    names = record.get("tensor_names")
    if names is None:
        return dict(tensors), user_meta
    if not isinstance(names, list) or sorted(map(str, names)) != sorted(tensors):
        raise VarattnError(f"checkpoint {directory} is corrupted ({META_NAME} and {WEIGHTS_NAME} disagree)")
    return {name: tensors[name] for name in names}, user_meta  # the order they were saved in


def load_weights(model: torch.nn.Module, directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the checkpoint in ``directory`` into ``model``; return its ``meta``.

    The tensors must match the model's parameters and buffers (tensors of parts the model was
    built without, such as an inference network it does not use, are allowed to be absent);
    anything else is a one-line :class:`VarattnError` saying the checkpoint does not fit its run.
    """
    tensors, meta = load_checkpoint(directory)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), type(exc).__name__)
        raise VarattnError(f"checkpoint {directory} does not match its run.json ({first})") from None
    if missing or unexpected:
        raise VarattnError(f"checkpoint {directory} does not match its run.json "
                           f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    return meta
