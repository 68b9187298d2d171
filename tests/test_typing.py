"""Static checks as tests: mypy --strict on the package and on a file of assert_type
probes of the public API, and ruff on the code. They need the `test` extra."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=280)


def test_mypy_strict_on_the_package_and_the_public_types() -> None:
    pytest.importorskip("mypy")
    proc = run(
        sys.executable, "-m", "mypy", "--strict", "--warn-unused-ignores",
        "--no-incremental", "src/tasklanes", "tests/typing/check_public_types.py",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    # Only the folders that exist: ruff reports a missing path as an error.
    folders = [d for d in ("src", "benchmarks", "examples", "tests", "scripts") if (ROOT / d).is_dir()]
    proc = run(ruff, "check", *folders)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_package_ships_py_typed() -> None:
    assert (ROOT / "src" / "tasklanes" / "py.typed").exists()


def test_runtime_dependencies_are_anyio_and_typing_extensions_only() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = sorted(dep.split(">")[0].split("=")[0].strip() for dep in project["dependencies"])
    assert names == ["anyio", "typing-extensions"]
