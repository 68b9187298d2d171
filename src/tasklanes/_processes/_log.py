"""The pool's logger: every event outside a task's result (a crash, a kill, a failed
worker start, a recycle, an internal error) is a record here, with structured
`extra=` fields (`lane`, `pid`, `index`, `exitcode`, ...)."""

from __future__ import annotations

import logging

__all__ = ["log"]

log = logging.getLogger("tasklanes.processes")

# A library adds no handler but a NullHandler (so that, unconfigured, logging does not
# fall back to printing warnings on stderr). Once, on the package's logger.
_root = logging.getLogger("tasklanes")
if not any(isinstance(h, logging.NullHandler) for h in _root.handlers):
    _root.addHandler(logging.NullHandler())
