"""Reading parallel and monolingual text files strictly and predictably.

Conventions shared by every reader here:

* Files are decoded as strict UTF-8; a bad byte raises :class:`~varattn.errors.VarattnError` naming the
  file and the 1-based line number.
* Lines are split on ``"\\n"`` only, so line numbers agree with ``wc -l`` and with editors (Python's
  :meth:`str.splitlines` would also split on ``\\r``, ``\\x1c``, ``\\x85``, ``\\u2028``, ...).
  One trailing ``"\\r"`` is removed from each line (CRLF files), a final line without a newline is
  kept, and a file ending in ``"\\n"`` has no extra empty last line.
* A UTF-8 byte-order mark at the very start of a file is removed.

A parallel corpus is two such files with the same number of lines, either named explicitly or with
the fairseq convention ``PREFIX.SRC_LANG`` / ``PREFIX.TGT_LANG`` (:func:`resolve_pair`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from varattn.errors import VarattnError

__all__ = [
    "ParallelCorpus",
    "resolve_pair",
    "read_lines",
    "read_parallel",
    "read_monolingual",
    "iter_lines",
]

_BOM = "\ufeff"


def _check_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.is_dir():
        raise VarattnError(f"{path} is a directory, expected a text file")
    if not path.exists():
        raise VarattnError(f"file not found: {path}")
    return path


def resolve_pair(
    prefix: str | os.PathLike[str] | None = None,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    src: str | os.PathLike[str] | None = None,
    tgt: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path]:
    """Return the ``(source, target)`` file paths of a parallel corpus, checking that both exist.

    Either give ``prefix``, ``src_lang`` and ``tgt_lang`` (files ``PREFIX.SRC_LANG`` and
    ``PREFIX.TGT_LANG``, as in fairseq: ``train`` + ``de`` + ``en`` -> ``train.de``, ``train.en``) or
    give both ``src`` and ``tgt`` explicitly; an explicit path wins over the prefix for its side.
    """
    if src is None or tgt is None:
        if prefix is None or (src is None and not src_lang) or (tgt is None and not tgt_lang):
            raise VarattnError(
                "name the parallel corpus either with a prefix and both languages (PREFIX.SRC, PREFIX.TGT) "
                "or with explicit source and target files"
            )
    src_path = Path(src) if src is not None else Path(f"{os.fspath(prefix)}.{src_lang}")
    tgt_path = Path(tgt) if tgt is not None else Path(f"{os.fspath(prefix)}.{tgt_lang}")
    return _check_file(src_path), _check_file(tgt_path)


def _decode_lines(data: bytes, name: str) -> list[str]:
    """Strict UTF-8 decode of a whole file's bytes, split on ``\\n`` only (see the module docstring)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        column = exc.start - line_start + 1
        raise VarattnError(
            f"{name}: line {line_no} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at byte {column} of the line)"
        ) from exc
    if not text:
        return []
    if text.startswith(_BOM):
        text = text[1:]
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """All lines of a UTF-8 text file, without line terminators (``\\n`` or ``\\r\\n``).

    Missing file, directory or unreadable file -> VarattnError; invalid UTF-8 -> VarattnError naming
    the file and the 1-based line number.
    """
    path = _check_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VarattnError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return _decode_lines(data, str(path))


def read_monolingual(path: str | os.PathLike[str]) -> list[str]:
    """Lines to translate: like :func:`read_lines`; empty lines are kept so output lines match input."""
    return read_lines(path)


@dataclass
class ParallelCorpus:
    """Tokenised sentence pairs that survived filtering.

    ``src[i]`` / ``tgt[i]`` came from line ``kept_line_numbers[i]`` (1-based) of both files;
    ``dropped_empty`` pairs had an empty side, ``dropped_long`` pairs had a side longer than
    ``max_len`` tokens, out of ``total`` lines per file.
    """

    src: list[list[str]]
    tgt: list[list[str]]
    kept_line_numbers: list[int]
    dropped_empty: int
    dropped_long: int
    total: int
    src_path: str = ""
    tgt_path: str = ""
    max_len: int | None = field(default=None)

    def __len__(self) -> int:
        return len(self.src)

    def summary(self) -> str:
        """One line such as ``read 1000 pairs from X / Y: kept 990, dropped 7 empty, 3 longer than 125
        tokens``."""
        noun = "pair" if self.total == 1 else "pairs"
        where = f" from {self.src_path} / {self.tgt_path}" if self.src_path or self.tgt_path else ""
        if self.max_len is None:
            limit = "no length limit"
        else:
            limit = f"{self.dropped_long} longer than {self.max_len} tokens"
        kept = len(self.src)
        return f"read {self.total} {noun}{where}: kept {kept}, dropped {self.dropped_empty} empty, {limit}"


def read_parallel(
    src_path: str | os.PathLike[str],
    tgt_path: str | os.PathLike[str],
    max_len: int | None = 125,
    tokenize: Callable[[str], list[str]] = str.split,
    tokenize_tgt: Callable[[str], list[str]] | None = None,
) -> ParallelCorpus:
    """Read two aligned files, tokenise each line and filter pairs.

    ``tokenize_tgt`` tokenises the target side when it differs from ``tokenize``. Both files are
    read and decoded completely first; different line counts raise VarattnError naming
    both files and both counts. A pair is dropped (both sides together) when either side has no tokens,
    or when ``max_len`` is not None and either side has more than ``max_len`` tokens.
    """
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
        raise VarattnError(f"max_len must be a positive integer or None, got {max_len!r}")
    src_lines = read_lines(src_path)
    tgt_lines = read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise VarattnError(
            f"parallel files differ in length: {src_path} has {len(src_lines)} lines but {tgt_path} has "
            f"{len(tgt_lines)} lines"
        )
    src_out: list[list[str]] = []
    tgt_out: list[list[str]] = []
    kept: list[int] = []
    dropped_empty = dropped_long = 0
    for number, (s_line, t_line) in enumerate(zip(src_lines, tgt_lines), start=1):
        s_tok = list(tokenize(s_line))
        t_tok = list((tokenize_tgt or tokenize)(t_line))
        if not s_tok or not t_tok:
            dropped_empty += 1
        elif max_len is not None and (len(s_tok) > max_len or len(t_tok) > max_len):
            dropped_long += 1
        else:
            src_out.append(s_tok)
            tgt_out.append(t_tok)
            kept.append(number)
    return ParallelCorpus(
        src=src_out,
        tgt=tgt_out,
        kept_line_numbers=kept,
        dropped_empty=dropped_empty,
        dropped_long=dropped_long,
        total=len(src_lines),
        src_path=str(src_path),
        tgt_path=str(tgt_path),
        max_len=max_len,
    )


def _stream_name(stream: Any, name: str | None) -> str:
    if name is not None:
        return name
    stream_name = getattr(stream, "name", None)
    return stream_name if isinstance(stream_name, str) else "<stream>"


def iter_lines(stream: IO[str] | IO[bytes], name: str | None = None) -> Iterator[str]:
    """Yield the lines of ``stream`` one at a time, as soon as each is available (e.g. ``sys.stdin``).

    Same rules as :func:`read_lines`. A text stream that wraps a binary buffer (``sys.stdin``) is read
    through that buffer and decoded here as strict UTF-8 whatever the locale; a binary stream is
    decoded the same way; a pure text stream (``io.StringIO``) is split on ``"\\n"`` and checked for
    undecodable characters (lone surrogates). Invalid input raises VarattnError naming the stream
    (``name`` or ``stream.name``) and the 1-based line number, when that line is reached. Do not read
    from the text layer of such a stream before calling this: text it already buffered is skipped.
    """
    label = _stream_name(stream, name)
    buffer = getattr(stream, "buffer", None)
    if isinstance(stream, io.TextIOBase) and buffer is not None:
        stream = buffer
    number = 0
    pending: str | bytes | None = None
    while True:
        chunk = stream.readline()
        if not chunk:
            break
        if not isinstance(chunk, (str, bytes, bytearray)):
            raise VarattnError(f"{label}: expected a text or binary stream, read {type(chunk).__name__}")
        if isinstance(chunk, bytearray):
            chunk = bytes(chunk)
        newline = "\n" if isinstance(chunk, str) else b"\n"
        pending = chunk if pending is None else pending + chunk
        # readline stops at "\n" for ordinary streams; split defensively in case a stream does not
        while newline in pending:
            line, pending = pending.split(newline, 1)
            number += 1
            yield _decode_one(line, number, label)
        if not pending:
            pending = None
    if pending:
        number += 1
        yield _decode_one(pending, number, label)


def _decode_one(line: str | bytes, number: int, label: str) -> str:
    if isinstance(line, bytes):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise VarattnError(
                f"{label}: line {number} is not valid UTF-8 (byte 0x{line[exc.start]:02x} at byte "
                f"{exc.start + 1} of the line)"
            ) from exc
    else:
        try:
            line.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise VarattnError(
                f"{label}: line {number} is not valid UTF-8 (undecodable character at position {exc.start + 1})"
            ) from exc
        text = line
    if text.endswith("\r"):
        text = text[:-1]
    if number == 1 and text.startswith(_BOM):
        text = text[1:]
    return text
