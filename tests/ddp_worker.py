"""Run ``varattn`` under torchrun and record which files this rank wrote (for tests/test_distributed.py).

Usage: ``torchrun ... tests/ddp_worker.py WATCHED_DIR REPORT_PREFIX -- VARATTN ARGS...``. Every
write-mode ``open``, rename, removal and directory creation under ``WATCHED_DIR`` (seen through
Python's audit hooks) is written, once ``varattn`` has returned, to ``REPORT_PREFIX.rankN.json``.
"""

from __future__ import annotations

import json
import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def main() -> int:
    watched, prefix, sep, *argv = sys.argv[1:]
    assert sep == "--"
    watched = os.path.realpath(watched)
    writes: list[str] = []
    recording = [True]

    def under(path) -> bool:
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(watched)
        except (TypeError, ValueError):
            return False

    def hook(event: str, args: tuple) -> None:
        if not recording[0]:
            return
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
            if writing and under(path):
                writes.append(f"open {path}")
        elif event in ("os.rename", "os.replace", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree",
                       "os.truncate") and args and under(args[0]):
            writes.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    from varattn.cli import main as varattn_main

    code = varattn_main(argv)
    recording[0] = False
    with open(f"{prefix}.rank{os.environ['RANK']}.json", "w") as f:
        json.dump({"code": code, "writes": writes}, f)
    return code


if __name__ == "__main__":
    sys.exit(main())
