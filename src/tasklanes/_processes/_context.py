"""The start method of the pool's worker processes, resolved in one place."""

from __future__ import annotations

import multiprocessing
import sys
from multiprocessing.context import BaseContext

from . import _worker

__all__ = ["default_context"]

_WORKER_MODULE = _worker.__name__


def default_context() -> BaseContext:
    """The start method the pool uses unless told otherwise.

    `forkserver` on Linux: safe with threads in the parent (unlike `fork`), and a
    worker starts in milliseconds because the server has already imported the worker
    module (we add it to the server's preload list). `spawn` elsewhere.

    `multiprocessing.get_context("forkserver")` is a process-wide singleton, and so is
    its server, so the preload list we extend is shared with any other user of that
    context. That is harmless: we keep the modules already listed and only add our
    import-light worker module; and if the server already runs, the call has no effect.
    """
    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    current = list(getattr(server, "_preload_modules", None) or ["__main__"])
    if _WORKER_MODULE not in current:
        ctx.set_forkserver_preload([*current, _WORKER_MODULE])
    return ctx
