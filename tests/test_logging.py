"""The library logs; it never writes to stderr itself (progress bars and the CLI aside)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import tasklanes

SRC = Path(tasklanes.__file__).parent
# The progress bar draws on stderr by design; the demo and the command line are
# programs talking to their user.
ALLOWED = {"_progress.py", "_demo.py", "__main__.py"}

STDERR = re.compile(r"sys\.stderr\.write|print\([^)]*file\s*=\s*sys\.stderr|sys\.__stderr__")


def test_no_writes_to_stderr_in_the_library() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC).as_posix()
        if name in ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if STDERR.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "write to logging.getLogger('tasklanes'), not stderr:\n" + "\n".join(
        offenders
    )


def test_the_pattern_catches_what_it_should() -> None:
    assert STDERR.search('sys.stderr.write("x")')
    assert STDERR.search('print("x", file=sys.stderr)')
    assert not STDERR.search('print("x")')


def test_the_package_adds_only_a_null_handler() -> None:
    handlers = logging.getLogger("tasklanes").handlers
    assert handlers and all(type(h) is logging.NullHandler for h in handlers)
    assert not logging.getLogger("tasklanes.advice").handlers
