"""The layering of docs/architecture.md, checked by import-linter (the contract is in pyproject.toml).

``test_layers_kept`` runs the contract on the package as it is.  The other tests copy the package
into a temporary directory, add one forbidden import (creating the module it needs if it does
not exist yet, e.g. ``varattn.vqa``) and check that the same contract then fails and names the
offending pair of layers, so each rule is shown to be able to fail.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def _lint(root: Path) -> subprocess.CompletedProcess:
    """Run lint-imports on ``root/src/varattn`` with the contract of ``root/pyproject.toml``."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [sys.executable, "-c", LINT, str(root / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )


def _copy_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "src" / "varattn", tmp_path / "src" / "varattn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _add_module(root: Path, dotted: str, source: str) -> None:
    """Write module ``dotted`` (e.g. ``varattn.vqa.bad``), creating missing packages on the way."""
    parts = dotted.split(".")
    package = root / "src"
    for name in parts[:-1]:
        package = package / name
        if not package.exists():
            package.mkdir()
            (package / "__init__.py").write_text("")
    module = package / f"{parts[-1]}.py"
    assert not module.exists()
    module.write_text(source)


def _ensure_module(root: Path, dotted: str) -> None:
    """Create ``dotted`` as an empty package if neither a module nor a package of that name exists."""
    path = root / "src" / Path(*dotted.split("."))
    if not path.with_suffix(".py").exists() and not path.is_dir():
        _add_module(root, f"{dotted}.stub", "")


def test_layers_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


# (importer, imported): each pair breaks one rule of docs/architecture.md.
FORBIDDEN = [
    ("varattn.latent", "varattn.nmt"),  # latent knows no task
    ("varattn.latent", "varattn.vqa"),
    ("varattn.latent", "varattn.training"),  # ... and no training loop
    ("varattn.latent", "varattn.commands"),  # ... and no CLI
    ("varattn.training", "varattn.nmt"),  # the training core knows no task
    ("varattn.training", "varattn.vqa"),
    ("varattn.training", "varattn.cli"),
    ("varattn.nmt", "varattn.vqa"),  # the tasks are independent
    ("varattn.vqa", "varattn.nmt"),
    ("varattn.nmt", "varattn.commands"),  # only the CLI imports the tasks, never the reverse
    ("varattn.objective_options", "varattn.vqa"),  # the tasks' shared config helper sits below both
    ("varattn.training", "varattn.objective_options"),  # ... and above the core
    ("varattn.vocab", "varattn.nmt"),  # utilities import no task
    ("varattn.plot", "varattn.vqa"),
    ("varattn.fileio", "varattn.training"),  # ... nor the training core
    ("varattn.kernels", "varattn.latent"),  # kernels are torch only (and errors)
    ("varattn.kernels", "varattn.device"),
    ("varattn.errors", "varattn.device"),  # errors is the bottom
]


def _add_import(root: Path, importer: str, imported: str) -> None:
    """Make ``importer`` import ``imported``: append to a single-module layer, else add a submodule."""
    _ensure_module(root, imported)
    module = (root / "src" / Path(*importer.split("."))).with_suffix(".py")
    if importer == "varattn":  # the facade
        module = root / "src" / "varattn" / "__init__.py"
    if module.exists():  # the facade, plot.py, errors.py, kernels.py
        module.write_text(module.read_text() + f"\nimport {imported}  # added by the test\n")
    else:
        _add_module(root, f"{importer}.added_import_{imported.rsplit('.', 1)[-1]}", f"import {imported}\n")


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN, ids=[f"{a}->{b}" for a, b in FORBIDDEN])
def test_forbidden_import_breaks_contract(tmp_path, importer, imported):
    root = _copy_package(tmp_path)
    _add_import(root, importer, imported)
    result = _lint(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{importer} is not allowed to import {imported}" in result.stdout, result.stdout


def test_indirect_import_breaks_contract(tmp_path):
    """A chain counts too: the facade varattn/__init__.py imports nmt, so latent may not import the facade."""
    root = _copy_package(tmp_path)
    _add_module(root, "varattn.latent.added_import_facade", "import varattn\n")
    result = _lint(root)
    assert result.returncode == 1
    assert "varattn.latent is not allowed to import varattn.nmt" in result.stdout, result.stdout
    assert "varattn.latent.added_import_facade -> varattn (l.1)" in result.stdout, result.stdout


def test_allowed_imports_keep_contract(tmp_path):
    """The allowed directions stay green: kernels may import errors, the CLI and facade may import both tasks."""
    root = _copy_package(tmp_path)
    allowed = [
        ("varattn.kernels", "varattn.errors"),
        ("varattn.latent", "varattn.kernels"),
        ("varattn.latent", "varattn.device"),
        ("varattn.nmt", "varattn.training"),
        ("varattn.vqa", "varattn.training"),
        ("varattn.vqa", "varattn.latent"),
        ("varattn.vqa", "varattn.plot"),
        ("varattn.nmt", "varattn.objective_options"),
        ("varattn.objective_options", "varattn.latent"),
        ("varattn.training", "varattn.checkpoint"),
        ("varattn.training", "varattn.fileio"),
        ("varattn.checkpoint", "varattn.fileio"),
        ("varattn.commands", "varattn.nmt"),
        ("varattn.commands", "varattn.vqa"),
        ("varattn.cli", "varattn.vqa"),
        ("varattn", "varattn.vqa"),  # the facade (varattn/__init__.py)
    ]
    for importer, imported in allowed:
        _add_import(root, importer, imported)
    result = _lint(root)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unplaced_module_breaks_contract(tmp_path):
    """The contract is exhaustive: a new top-level module must be given a layer."""
    root = _copy_package(tmp_path)
    _add_module(root, "varattn.newthing", "")
    result = _lint(root)
    assert result.returncode == 1
    assert "varattn.newthing" in result.stdout, result.stdout


def test_scripts_use_the_library_not_the_command_layer():
    """benchmarks/ and experiments/ import varattn below the CLI (they may run ``varattn`` as a command)."""
    offending = []
    for script in sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("experiments/*.py")]):
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offending += [f"{script.relative_to(ROOT)}: {name}" for name in names
                          if name.split(".")[:2] in (["varattn", "commands"], ["varattn", "cli"])]
    assert not offending, offending
