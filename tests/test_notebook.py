"""tasklanes in a real Jupyter notebook: a notebook executed by ``nbclient`` on a real
``ipykernel``, with the three lanes awaited at the top level of cells, ``progress=True``
drawn through ``tqdm.auto``, the README's "In a notebook" cell, and what
``run_all_sync`` tells a notebook user.

The kernel runs this test's interpreter (a kernelspec written into a temporary directory,
so a clean machine with only the project's venv works) and imports the same tasklanes as
the test. The notebook is executed once for the module; each test checks its own cell, so
one failing cell names itself without hiding the others.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import pytest

import tasklanes

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
KERNEL_NAME = "tasklanes-test"

# Functions defined in a cell live in the kernel's __main__ (that is the point: a notebook
# user's functions are not importable by worker processes).
SETUP = """\
import time

import anyio

from tasklanes import call, run_all, run_all_sync


async def fetch(i):
    await anyio.sleep(0.01)
    return i * 10


def wait_then_double(i):
    time.sleep(0.01)
    return i * 2


def cube(i):
    return i ** 3


print("setup ok")
"""

CELLS: dict[str, str] = {
    "io": """\
pages = await run_all([call(fetch, i) for i in range(20)], limit=5, timeout=30)
print("io", pages)
""",
    "blocking": """\
doubled = await run_all([call(wait_then_double, i) for i in range(12)], kind="blocking",
                        limit=4, timeout=30)
print("blocking", doubled)
""",
    "cpu": """\
cubes = await run_all([call(cube, i) for i in range(8)], kind="cpu", timeout=120)
print("cpu", cubes)
""",
    "progress": """\
counted = await run_all([call(fetch, i) for i in range(30)], limit=10, progress=True)
print("progress", len(counted))
""",
    "sync_refuses": """\
try:
    run_all_sync([call(wait_then_double, 1)], kind="blocking")
except RuntimeError as exc:
    print("refused:", exc)
else:
    print("run_all_sync ran inside the notebook's loop")
""",
}


def readme_notebook_cell() -> str:
    """The first python block of the README's "In a notebook" section."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("## In a notebook")
    opening = next(i for i in range(start, len(lines)) if lines[i].strip() == "```python")
    closing = next(i for i in range(opening + 1, len(lines)) if lines[i].strip() == "```")
    return "\n".join(lines[opening + 1 : closing]) + "\n"


def write_kernelspec(directory: Path) -> None:
    """A kernelspec that starts this interpreter with this test's tasklanes on the path."""
    spec_dir = directory / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    src = str(Path(tasklanes.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tasklanes tests",
        "language": "python",
        "env": {"PYTHONPATH": path},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each cell of the executed notebook, by name."""
    home = tmp_path_factory.mktemp("jupyter")
    write_kernelspec(home)
    names = ["setup", *CELLS, "readme"]
    sources = [SETUP, *CELLS.values(), readme_notebook_cell()]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "JUPYTER_PLATFORM_DIRS")}
    os.environ["JUPYTER_PATH"] = str(home)
    os.environ["JUPYTER_PLATFORM_DIRS"] = "1"  # no migration warning from jupyter_core
    try:
        client = nbclient.NotebookClient(
            nb,
            kernel_name=KERNEL_NAME,
            timeout=240,  # per cell: a 2-core CI box under load starts workers slowly
            startup_timeout=180,
            allow_errors=True,  # every cell runs; each test reports its own cell's error
            resources={"metadata": {"path": str(home)}},
        )
        client.execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return dict(zip(names, nb.cells, strict=True))


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def text_of(cell: Any) -> str:
    """Everything a cell printed or displayed, as text; an error's traceback included
    (without IPython's colours)."""
    parts: list[str] = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}\n" + "\n".join(output.traceback))
        elif "data" in output:
            parts.extend(str(v) for v in output.data.values())
    return ANSI_ESCAPE.sub("", "".join(parts))


def assert_no_error(cell: Any) -> None:
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"the cell failed:\n{cell.source}\n---\n{text_of(cell)}"


def test_setup_cell(executed: dict[str, Any]) -> None:
    assert_no_error(executed["setup"])
    assert "setup ok" in text_of(executed["setup"])


def test_io_lane_with_top_level_await(executed: dict[str, Any]) -> None:
    cell = executed["io"]
    assert_no_error(cell)
    assert f"io {[i * 10 for i in range(20)]}" in text_of(cell)


def test_blocking_lane_with_top_level_await(executed: dict[str, Any]) -> None:
    cell = executed["blocking"]
    assert_no_error(cell)
    assert f"blocking {[i * 2 for i in range(12)]}" in text_of(cell)


def test_cpu_lane_runs_a_function_defined_in_a_cell(executed: dict[str, Any]) -> None:
    # The contract ("Interactive sessions"): a function defined in a notebook cell runs
    # on the cpu lane. Its worker processes cannot import it, so it travels by value.
    cell = executed["cpu"]
    assert_no_error(cell)
    assert f"cpu {[i**3 for i in range(8)]}" in text_of(cell)


def test_progress_bar_renders_through_tqdm_auto(executed: dict[str, Any]) -> None:
    cell = executed["progress"]
    assert_no_error(cell)
    assert "progress 30" in text_of(cell)
    widgets = [
        o for o in cell.outputs
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    # Without ipywidgets tqdm.auto falls back to a text bar on stderr: 30 of 30 done.
    text_bar = "".join(
        o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"
    )
    assert widgets or "30/30" in text_bar, f"no progress bar in the outputs: {cell.outputs}"


def test_run_all_sync_tells_a_notebook_user_what_to_type(executed: dict[str, Any]) -> None:
    cell = executed["sync_refuses"]
    assert_no_error(cell)
    text = text_of(cell)
    assert "refused:" in text, text
    assert "notebook" in text
    assert "await run_all(" in text  # what to type instead, literally


def test_readme_notebook_cell(executed: dict[str, Any]) -> None:
    cell = executed["readme"]
    assert_no_error(cell)
    assert "[0, 1, 4, 9, 16, 25, 36, 49]" in text_of(cell)
