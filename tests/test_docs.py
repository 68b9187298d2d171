"""The documentation builds strictly, and every Python code block in it runs.

Conventions for code blocks in ``docs/*.md`` (see docs/index.md, "About the examples"):

* every block fenced as ``python`` (or ``py``) is a complete program: it runs on its
  own, as a script, in a fresh interpreter, and its ``assert`` statements must hold;
* a block that defines ``async def main()`` and does not run it itself is run with
  ``anyio.run(main)`` (the docs leave that line out to stay short);
* a block whose only content is ``--8<--`` snippet lines includes a file (an example
  script, the changelog) that is tested elsewhere; it is not run here;
* a block right after an ``<!-- fragment -->`` comment line is an intentional fragment
  (a signature, part of a program): it is compiled, not run. Use it sparingly;
* blocks in any other language (``bash``, ``text``, ``pycon``) are not run.

The README's three examples (one per kind) are run too, against a local HTTP server.
"""

from __future__ import annotations

import ast
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
FRAGMENT = "<!-- fragment -->"


class Block(NamedTuple):
    page: str
    line: int
    language: str
    code: str
    fragment: bool = False

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
        previous = [line.strip() for line in lines[:i] if line.strip()]
        fragment = bool(previous) and previous[-1] == FRAGMENT
        indent, fence = match["indent"], match["fence"]
        info = match["info"].strip()
        language = info.split()[0].lstrip(".{").lower() if info else ""
        start = i + 1
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        blocks.append(Block(path.name, start, language, "\n".join(body) + "\n", fragment))
        i += 1
    return blocks


def is_snippet(block: Block) -> bool:
    lines = [line for line in block.code.splitlines() if line.strip()]
    return bool(lines) and all(line.strip().startswith("--8<--") for line in lines)


ALL_BLOCKS = [b for page in sorted(DOCS.glob("*.md")) for b in code_blocks(page)]
PYTHON_BLOCKS = [
    b for b in ALL_BLOCKS if b.language in PYTHON and not is_snippet(b) and not b.fragment
]
FRAGMENTS = [b for b in ALL_BLOCKS if b.language in PYTHON and b.fragment]
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
    """The test run's environment (tasklanes is installed, editable, in CI), with
    loopback requests kept away from any configured HTTP proxy."""
    env = dict(os.environ)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def run_script(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(path)],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=80,
    )


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
    proc = run_script(script, tmp_path)
    assert proc.returncode == 0, (
        f"the code block at docs/{block.id} failed:\n{block.code}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    if block.page == "getting-started.md":  # a newcomer who copies it sees it work
        assert proc.stdout.strip(), f"docs/{block.id} printed nothing"


GETTING_STARTED = [b for b in PYTHON_BLOCKS if b.page == "getting-started.md"]


@pytest.mark.parametrize("block", GETTING_STARTED, ids=lambda b: b.id)
def test_getting_started_examples_run_as_copied(block: Block) -> None:
    # Copied into a file and run with `python`, each example runs its main() itself
    # (no line left out for the test runner to add) and prints what it did.
    assert as_script(block.code) == block.code, f"docs/{block.id} never runs its main()"
    assert "print(" in block.code, f"docs/{block.id} prints nothing"


@pytest.mark.parametrize("block", FRAGMENTS or [None], ids=lambda b: b.id if b else "none")
def test_fragments_compile(block: Block | None) -> None:
    if block is not None:  # a notebook cell may await at its top level
        compile(block.code, f"docs/{block.id}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


# -- the README's example of each kind, run against a local HTTP server -------------------

def readme_section_start(heading: str) -> int:
    """The line number (1-based) of a README heading."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    return lines.index(heading) + 1


# The three kinds' examples come before "In a notebook" (a notebook cell, with a top-level
# await, that tests/test_notebook.py runs in a real Jupyter kernel).
README_BLOCKS = [
    b for b in code_blocks(ROOT / "README.md")
    if b.language in PYTHON and b.line < readme_section_start("## In a notebook")
]

# Runs a README block's main(urls) against a local uvicorn app (examples/_servers.py).
AGAINST_A_SERVER = """

import sys as _sys

_sys.path.insert(0, {examples!r})
import anyio as _anyio
from _servers import Gauge as _Gauge, serve as _serve
from starlette.applications import Starlette as _Starlette
from starlette.responses import PlainTextResponse as _Text
from starlette.routing import Route as _Route

_gauge = _Gauge()


async def _item(request):
    with _gauge:
        await _anyio.sleep(0.02)
        return _Text("ok")


with _serve(_Starlette(routes=[_Route("/items/{{i:int}}", _item)])) as _base:
    _urls = [f"{{_base}}/items/{{i}}" for i in range(60)]
    _result = {run}
assert _result == [200] * 60, _result
assert _gauge.total == 60 and _gauge.peak <= 20, (_gauge.total, _gauge.peak)
print("README example:", len(_result), "requests, at most", _gauge.peak, "at once")
"""


def test_readme_has_one_example_per_kind() -> None:
    io, blocking, cpu = (b.code for b in README_BLOCKS)
    assert "kind=" not in io  # "io" is the default
    assert 'kind="blocking"' in blocking
    assert 'kind="cpu"' in cpu
    assert all(len(b.code.strip().splitlines()) <= 12 for b in README_BLOCKS)  # short


@pytest.mark.slow
@pytest.mark.parametrize("block", README_BLOCKS, ids=lambda b: f"README.md:{b.line}")
def test_readme_example_runs(block: Block, tmp_path: Path) -> None:
    code = block.code
    if "async def main(urls" in code:
        code += AGAINST_A_SERVER.format(examples=str(ROOT / "examples"),
                                        run="_anyio.run(main, _urls)")
    elif "def main(urls" in code:
        code += AGAINST_A_SERVER.format(examples=str(ROOT / "examples"), run="main(_urls)")
    script = tmp_path / f"readme_{block.line}.py"
    script.write_text(code, encoding="utf-8")
    proc = run_script(script, tmp_path)
    assert proc.returncode == 0, f"README.md:{block.line} failed:\n{proc.stdout}\n{proc.stderr}"
    if 'kind="cpu"' in code:
        assert "[1229, 5133, 9592]" in proc.stdout  # as its comment says
    else:
        assert "README example: 60 requests" in proc.stdout


# -- the site ----------------------------------------------------------------------------


def test_nav_lists_every_page() -> None:
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    listed = {page for entry in nav for page in entry.values()}
    assert listed == {p.name for p in DOCS.glob("*.md")}


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
    # docs/changelog.md includes CHANGELOG.md: one source
    changelog = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    assert "Unreleased" in changelog
    assert "Keep a Changelog" in changelog
    which = (site / "which-kind" / "index.html").read_text(encoding="utf-8")
    assert "Where the numbers come from" in which
    check_api_reference_renders_markdown(api)
    check_wide_content_scrolls(site)


def check_api_reference_renders_markdown(api: str) -> None:
    """Docstrings' cross-references are links and their examples code, not raw markup."""
    for raw in (":func:", ":class:", ":meth:", "Example::"):
        assert raw not in api, f"raw Sphinx markup {raw!r} in the API reference"
    assert 'href="#tasklanes.run_all"' in api  # [run_all][tasklanes.run_all] became a link
    assert 'href="#tasklanes.TaskTimeout"' in api


def check_wide_content_scrolls(site: Path) -> None:
    """Wide tables and code lines scroll sideways (docs/stylesheets/extra.css) on every
    page, instead of being cut off at the right edge."""
    css = (site / "stylesheets" / "extra.css").read_text(encoding="utf-8")
    assert css.count("overflow-x: auto") >= 3
    performance = (site / "performance" / "index.html").read_text(encoding="utf-8")
    assert "stylesheets/extra.css" in performance
    assert "<table>" in performance  # a plain table: the CSS rule applies to it


def test_no_placeholder_urls() -> None:
    for name in ("mkdocs.yml", "pyproject.toml", "README.md"):
        text = (ROOT / name).read_text(encoding="utf-8")
        assert "example.invalid" not in text, f"a placeholder URL in {name}"


# -- docstrings: Markdown for mkdocstrings, not Sphinx/reStructuredText ------------------

SPHINX_ROLE = re.compile(r":(?:py:)?[a-z]+:`[^`]*`")
RST_LINK = re.compile(r"`[^`<]+ <[^>]+>`_")


def docstrings() -> list[tuple[str, str]]:
    """Every module, class and function docstring under src/tasklanes, with where it is."""
    found: list[tuple[str, str]] = []
    for path in sorted((ROOT / "src" / "tasklanes").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 1)}"
                    found.append((where, doc))
    return found


def test_docstrings_are_markdown_not_sphinx() -> None:
    found = docstrings()
    assert len(found) > 50  # the walk really reads the package
    problems = []
    for where, doc in found:
        for line in doc.splitlines():
            stripped = line.strip()
            if SPHINX_ROLE.search(line):
                problems.append(f"{where}: Sphinx role (write [name][tasklanes.name] or `name`): {stripped}")
            if RST_LINK.search(line):
                problems.append(f"{where}: reST link (write [text](url)): {stripped}")
            if stripped.endswith("::") and not stripped.startswith(":::"):
                problems.append(f"{where}: reST literal block (write a ```python fence): {stripped}")
    assert not problems, "docstrings must be Markdown (mkdocstrings):\n" + "\n".join(problems)


def test_the_docstring_check_catches_sphinx_markup() -> None:
    assert SPHINX_ROLE.search("see :func:`run_all` and")
    assert SPHINX_ROLE.search(":class:`tasklanes.Scheduler`")
    assert RST_LINK.search("`tqdm <https://tqdm.github.io/>`_")
    assert not SPHINX_ROLE.search("see [run_all][tasklanes.run_all] and `x: int`")
