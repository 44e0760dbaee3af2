"""What the subcommands share: run flags, corpus flags, reading lines, writing output.

Every subcommand module in this package has ``register(subparsers)`` (adds its parser, with
``set_defaults(func=run)``) and ``run(args) -> int``; ``varattn.cli`` assembles them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TypeVar

from varattn.errors import VarattnError

Item = TypeVar("Item")
log = logging.getLogger("varattn")

#: how ``--input``/``--src``/``--tgt``/``--hyp``/``--output`` name the standard streams
STDIO = "-"


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """``RUN_DIR``, ``--checkpoint best|last`` and ``--device``."""
    p.add_argument("run_dir", help="run directory written by varattn train")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU if there is one, else the CPU), cpu, cuda or cuda:N (default auto)")


def add_corpus_arguments(p: argparse.ArgumentParser, stdin: bool = False) -> None:
    """``--prefix``, ``--src``, ``--tgt``, ``--src-lang``, ``--tgt-lang`` naming a parallel corpus."""
    from varattn.nmt.registration import corpus_flags

    corpus_flags(p, stdin)


def check_batch_size(value: int, flag: str = "--batch-size") -> None:
    if value < 1:
        raise VarattnError(f"{flag} must be at least 1, got {value}")


def open_run(args: argparse.Namespace, task: str = "nmt"):
    """The trained run that ``add_run_arguments``' flags name, which must be of ``task`` (default: translation)."""
    from varattn import load

    return load(args.run_dir, args.checkpoint, args.device, task)


class UnknownTokens:
    """Counts the input tokens a model does not know (read as ``<unk>``) and says so on stderr.

    :meth:`add` counts one line's side and warns about a side that is all unknown; :meth:`report` ends the
    command with one line on the totals, if there were any.
    """

    def __init__(self) -> None:
        self.unknown: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.lines: dict[str, int] = {}

    def add(self, side: str, unknown: int, total: int, line: int) -> int:
        self.unknown[side] = self.unknown.get(side, 0) + unknown
        self.total[side] = self.total.get(side, 0) + total
        self.lines[side] = self.lines.get(side, 0) + (unknown > 0)
        if total and unknown == total:
            log.warning("line %d: all %d %s tokens are unknown to the model (read as <unk>): its output is a guess",
                        line, total, side)
        return unknown

    def report(self) -> None:
        for side, unknown in self.unknown.items():
            if unknown:
                log.warning("%d of %d %s tokens (on %d lines) were unknown to the model and read as <unk>", unknown,
                            self.total[side], side, self.lines[side])


def chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive lists of ``size`` items (the last may be shorter), read lazily: streams stay streams."""
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def stream_name(path: str | None) -> str:
    return "<stdin>" if path is None or path == STDIO else str(path)


def input_lines(path: str | None) -> list[str] | Iterator[str]:
    """All lines of a file, or a lazy line iterator over stdin for ``None`` or ``-``."""
    from varattn.nmt.corpora.corpus import iter_lines, read_lines

    if path is None or path == STDIO:
        return iter_lines(sys.stdin, "<stdin>")
    return read_lines(path)


@contextlib.contextmanager
def streamed_input(path: str | None) -> Iterator[Iterator[str]]:
    """A lazy line iterator over a file or stdin (``None``/``-``), the file closed on exit."""
    from varattn.nmt.corpora.corpus import iter_lines

    if path is None or path == STDIO:
        yield iter_lines(sys.stdin, "<stdin>")
        return
    if os.path.isdir(path):
        raise VarattnError(f"{path} is a directory, expected a text file")
    if not os.path.exists(path):
        raise VarattnError(f"file not found: {path}")
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise VarattnError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        yield iter_lines(handle, str(path))


def paired(src: Iterable[str], tgt: Iterable[str], src_name: str, tgt_name: str) -> Iterator[tuple[str, str]]:
    """Zip two line sources lazily, failing with both line counts if they differ."""
    src_it, tgt_it = iter(src), iter(tgt)
    n = 0
    while True:
        s = next(src_it, None)
        t = next(tgt_it, None)
        if s is None and t is None:
            return
        if s is None or t is None:
            rest_s = n + (s is not None) + sum(1 for _ in src_it)
            rest_t = n + (t is not None) + sum(1 for _ in tgt_it)
            raise VarattnError(f"sentence counts differ: {src_name} has {rest_s} lines but {tgt_name} has "
                               f"{rest_t} lines")
        n += 1
        yield s, t


def writes_to_stdout(path: str | None) -> bool:
    return path is None or path == STDIO


@contextlib.contextmanager
def output_stream(path: str | None) -> Iterator[IO[str]]:
    """stdout for ``None``/``-``, else ``path`` opened for UTF-8 text with ``\\n`` line ends (closed on exit).

    A reader that goes away (``varattn translate ... | head -1``) is handled once, in
    ``varattn.cli.main``: the command stops quietly with status 0.
    """
    if writes_to_stdout(path):
        yield sys.stdout
        return
    try:
        handle = open(path, "w", encoding="utf-8", newline="\n")
    except OSError as exc:
        raise VarattnError(f"cannot write {path}: {exc.strerror or exc}") from None
    with handle:
        yield handle


def silence_closed_stdout() -> None:
    """Point stdout at /dev/null after its reader went away, so the exit-time flush is quiet too."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


# -- flags of the registered tasks ---------------------------------------------------------------------


def add_task_flags(parser: argparse.ArgumentParser, title: str, add: Callable[[argparse.ArgumentParser], None]) -> None:
    """A task's own flags (``add``, e.g. a ``TaskSpec``'s ``train_flags``) in a group of ``parser``; a flag that
    another task already added is shared, not repeated."""
    group = parser.add_argument_group(title)

    class Shared:
        @staticmethod
        def add_argument(*names, **kwargs):
            try:
                return group.add_argument(*names, **kwargs)
            except argparse.ArgumentError:  # the same flag, added by another task: one flag serves both
                return None

    add(Shared)


def task_flag_actions(add: Callable[[argparse.ArgumentParser], None] | None) -> list[argparse.Action]:
    """The flags ``add`` defines (their ``dest``, ``default``, ``option_strings``), read off a scratch parser."""
    if add is None:
        return []
    scratch = argparse.ArgumentParser(add_help=False)
    actions: list[argparse.Action] = []

    class Recorder:
        @staticmethod
        def add_argument(*names, **kwargs):
            actions.append(scratch.add_argument(*names, **kwargs))
            return actions[-1]

    add(Recorder)
    return actions


def refuse_foreign_flags(args: argparse.Namespace, spec, kind: str, where: str) -> None:
    """A flag of another registered task's ``kind`` (``train``, ``evaluate``) that was given: one-line error."""
    from varattn.training.registry import get_task, task_names

    own = {a.dest for a in task_flag_actions(getattr(spec, f"{kind}_flags"))}
    for name in task_names():
        if name == spec.name:
            continue
        for action in task_flag_actions(getattr(get_task(name), f"{kind}_flags")):
            if action.dest not in own and getattr(args, action.dest, action.default) != action.default:
                raise VarattnError(f"{action.option_strings[0]} is for {name} runs, not for this {spec.name} run "
                                   f"({where})")
