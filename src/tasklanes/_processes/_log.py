"""The pool's logger: every event outside a task's result (a crash, a kill, a failed
worker start, a recycle, an internal error) is a record here, with structured
`extra=` fields (`lane`, `pid`, `index`, `exitcode`, ...)."""

from __future__ import annotations

import logging

__all__ = ["log"]

log = logging.getLogger("tasklanes.processes")
# (The package's `__init__` gives the "tasklanes" logger its NullHandler, once.)
