"""The documentation builds strictly, and every Python code block in it runs.

Conventions for code blocks in ``docs/*.md`` (see docs/index.md, "About the examples"):

* every block fenced as ``python`` (or ``py``) is a complete program: it runs on its
  own, as a script, in a fresh interpreter, and its ``assert`` statements must hold;
* a block that defines ``async def main()`` and does not run it itself is run with
  ``anyio.run(main)`` (the docs leave that line out to stay short);
* a block whose only content is ``--8<--`` snippet lines includes a file (an example
  script, the changelog) that is tested elsewhere; it is not run here;
* blocks in any other language (``bash``, ``text``, ``pycon``) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
PYTHON = {"python", "py", "python3"}


class Block(NamedTuple):
    page: str
    line: int
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page (also inside admonitions and tabs)."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        info = match["info"].strip()
        language = info.split()[0].lstrip(".{").lower() if info else ""
        start = i + 1
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        blocks.append(Block(path.name, start, language, "\n".join(body) + "\n"))
        i += 1
    return blocks


def is_snippet(block: Block) -> bool:
    lines = [line for line in block.code.splitlines() if line.strip()]
    return bool(lines) and all(line.strip().startswith("--8<--") for line in lines)


ALL_BLOCKS = [b for page in sorted(DOCS.glob("*.md")) for b in code_blocks(page)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.language in PYTHON and not is_snippet(b)]
RUNS_MAIN = re.compile(r"\b(anyio|trio|asyncio)\.run\(\s*main\b")
DEFINES_MAIN = re.compile(r"^async def main\(\s*\)", re.MULTILINE)


def as_script(code: str) -> str:
    if DEFINES_MAIN.search(code) and not RUNS_MAIN.search(code):
        code += textwrap.dedent(
            """

            if __name__ == "__main__":
                import anyio as _anyio

                _anyio.run(main)
            """
        )
    return code


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def test_docs_have_python_blocks() -> None:
    pages = {b.page for b in PYTHON_BLOCKS}
    for page in ("which-kind.md", "getting-started.md", "cancellation.md", "errors.md"):
        assert page in pages
    assert len(PYTHON_BLOCKS) >= 20


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_code_block_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / f"{Path(block.page).stem.replace('-', '_')}_{block.line}.py"
    script.write_text(as_script(block.code), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert proc.returncode == 0, (
        f"the code block at docs/{block.id} failed:\n{block.code}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = subprocess_env()
    env["NO_MKDOCS_2_WARNING"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("run_all", "as_completed", "amap", "run_all_sync", "offload", "Scheduler",
                 "TaskTimeout", "WorkerCrashed", "check_cancelled", "ProgressUpdate"):
        assert f'id="tasklanes.{name}"' in api, f"{name} missing from the API reference"
    changelog = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    assert "Unreleased" in changelog
