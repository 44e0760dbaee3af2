"""The README's library example runs and learns."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_starts_with_install_and_test_commands():
    text = README.read_text()
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert block == ["pip install -r requirements-cpu.txt", "python -m pytest"]


def test_library_example_runs(capsys):
    text = README.read_text()
    section = text.split("## The library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "exact log p(y | x):" in out
    # 8 labels out of 5 classes, learned from random features: far above chance (log 1/5 each)
    assert namespace["exact"].log_likelihood.sum().item() > 8 * -1.0
