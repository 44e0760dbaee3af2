"""The ``varattn`` command: one entry point, one subcommand per module of ``varattn.commands``.

This module only assembles the parser from ``COMMAND_MODULES`` (each has
``register(subparsers)`` and ``run(args) -> int``), with every registered task's flags
(``varattn.training.registry``), and runs the chosen subcommand. Errors a
user can cause print one line ``error: ...`` and exit with status 2; a reader that goes away
(``varattn translate ... | head -1``) ends the command quietly with status 0.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from varattn import __version__, register_shipped_tasks
from varattn.errors import VarattnError

#: the subcommands, in the order ``varattn --help`` lists them
COMMAND_MODULES = [
    "varattn.commands.train",
    "varattn.commands.evaluate",
    "varattn.commands.translate",
    "varattn.commands.bleu",
    "varattn.commands.align",
    "varattn.commands.plot",
    "varattn.commands.plot_metrics",
    "varattn.commands.toy_data",
    "varattn.commands.prepare",
    "varattn.commands.vqa",
    "varattn.commands.serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="varattn", description="Latent alignment and variational attention.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"varattn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    register_shipped_tasks()  # the train and evaluate flags of every task
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from varattn.commands.common import silence_closed_stdout

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        return args.func(args)
    except VarattnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except BrokenPipeError:
        # the reader of stdout went away (``| head``): stop quietly, as line-oriented tools do
        silence_closed_stdout()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
