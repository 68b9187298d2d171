"""Start methods, and what a worker process needs from the main module.

`multiprocessing` starts a worker in one of three ways, and each asks something
different of the program that starts it:

* `spawn` runs a fresh interpreter, which runs the parent's main script again (as
  `__mp_main__`) so that functions defined there can be found by name;
* `forkserver` forks each worker from a small server process, and the worker too
  runs the main script again;
* `fork` copies the parent as it is, threads excepted, and passes the `Process`
  arguments as objects, unpickled.

This module holds what the pool needs to get each of them right:

* [default_context][tasklanes._processes._context.default_context]: forkserver on
  Linux, spawn elsewhere (why: docs/start-methods.md);
* [main_is_importable][tasklanes._processes._context.main_is_importable]: whether a
  worker can find what `__main__` defines by name. Not in an interactive session (the
  REPL, Jupyter/IPython, `python -c`, a script read from standard input): there is no
  file to run again, so such functions must travel by value (`_pickling`);
* [start_process][tasklanes._processes._context.start_process]: `Process.start()`,
  except that a main "file" that does not exist (`<stdin>`) is not run again in the
  worker -- `multiprocessing` would try, and every worker would die at start;
* [worker_target][tasklanes._processes._context.worker_target]: under fork, the
  worker gets its shared block as the memory map it expects and closes the parent's
  ends of the pool's pipes, which it inherited;
* [refuse_while_importing_main][tasklanes._processes._context.refuse_while_importing_main]
  and [worker_exit_error][tasklanes._processes._context.worker_exit_error]: a script
  without `if __name__ == "__main__":` makes every worker re-run the code that starts
  the work. The worker says so with an exit code of its own, so that the parent gives
  the `__main__`-guard advice only when that is the cause.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Sequence
from multiprocessing import process
from multiprocessing.context import BaseContext
from typing import Any

from ._shared import SharedBlock

__all__ = [
    "EXIT_UNGUARDED_MAIN",
    "WORKER_NAME",
    "default_context",
    "describe_main",
    "main_is_importable",
    "refuse_while_importing_main",
    "start_process",
    "worker_exit_error",
    "worker_target",
]

logger = logging.getLogger("tasklanes.processes")

WORKER_NAME = "tasklanes-worker"
"""The name of every worker process (`multiprocessing.current_process().name`)."""

EXIT_UNGUARDED_MAIN = 87
"""A worker exits with this code when starting it re-ran a main script that starts
tasklanes work at import time (no `if __name__ == "__main__":`)."""

GUARD_ADVICE = (
    "put the code that starts the work under 'if __name__ == \"__main__\":' -- with the "
    "spawn and forkserver start methods, each worker process imports the main module"
)

_WORKER_MODULE = "tasklanes._processes._worker"


def default_context() -> BaseContext:
    """The start method the pool uses unless told otherwise.

    `forkserver` on Linux: safe with threads in the parent (unlike `fork`), and a
    worker starts in milliseconds because the server has already imported the worker
    module (we add it to the server's preload list). `spawn` elsewhere, as
    `multiprocessing` itself does on macOS and Windows.

    `multiprocessing.get_context("forkserver")` is a process-wide singleton, and so is
    its server, so the preload list we extend is shared with any other user of that
    context. That is harmless: we keep the modules already listed and only add our
    import-light worker module; and if the server already runs, the call has no effect.
    `__main__` leaves the list when there is no main file to import (stdin, `-c`, a
    notebook): a server that preloads it would fail to start.
    """
    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    current = list(getattr(server, "_preload_modules", None) or ["__main__"])
    wanted = [m for m in current if m != "__main__" or main_is_importable()]
    if _WORKER_MODULE not in wanted:
        wanted.append(_WORKER_MODULE)
    if wanted != current:
        ctx.set_forkserver_preload(wanted)
    return ctx


# ---------------------------------------------------------------------- the main module

_main_verdict: tuple[object, bool] = (object(), False)


def main_is_importable() -> bool:
    """Whether a worker process can import, by name, what `__main__` defines.

    True for a script run from a file (`python job.py`) and for `python -m module`:
    spawn and forkserver workers run them again, fork workers inherit them. False for
    an interactive `__main__` -- the REPL, Jupyter/IPython, `python -c`, a script read
    from standard input, `python -m package` (its `__main__` submodule is not run
    again) -- so what it defines must travel by value.

    Cheap: the answer is kept until `sys.modules["__main__"]` changes (IPython swaps
    it).
    """
    global _main_verdict
    main = sys.modules.get("__main__")
    known, verdict = _main_verdict
    if known is main:
        return verdict
    verdict = _importable(main)
    _main_verdict = (main, verdict)  # one assignment: safe from any thread
    return verdict


def _importable(main: object) -> bool:
    if main is None:
        return False
    # What multiprocessing.spawn.get_preparation_data looks at, in the same order.
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return name != "__main__" and not name.endswith(".__main__")
    path = getattr(main, "__file__", None)
    if not isinstance(path, str):
        return False
    # multiprocessing resolves a relative path against the directory at start-up.
    original_dir = getattr(process, "ORIGINAL_DIR", None)
    if not os.path.isabs(path) and original_dir is not None:
        path = os.path.join(original_dir, path)
    return os.path.isfile(path)


def describe_main() -> str:
    """What kind of session runs this process, for error messages."""
    main = sys.modules.get("__main__")
    if "IPython" in sys.modules or "ipykernel" in sys.modules:
        return "a Jupyter or IPython session"
    if getattr(main, "__file__", None) == "<stdin>":
        return "a script read from standard input"
    if sys.argv[:1] == ["-c"]:
        return "'python -c' code"
    if hasattr(sys, "ps1") or sys.flags.interactive:
        return "the interactive interpreter"
    return "a main module that worker processes cannot import"


# ---------------------------------------------------------------------- starting workers

_starting = threading.local()
_hook_lock = threading.Lock()


def start_process(proc: multiprocessing.process.BaseProcess) -> None:
    """`proc.start()`, without asking the new process to run a main file that does not
    exist.

    `multiprocessing` tells each spawn and forkserver child to run the parent's
    `__main__.__file__` again. For a script read from standard input that "file" is
    `<stdin>`: every worker would die at start, trying to open it. The standard library
    has no switch for this, so a hook on `multiprocessing.spawn.get_preparation_data`
    drops that one entry when the path is not a file -- only on the thread that runs
    this function, so other users of `multiprocessing` in the process are untouched.
    """
    _install_preparation_hook()
    _starting.active = True
    try:
        proc.start()
    finally:
        _starting.active = False


def _install_preparation_hook() -> None:
    from multiprocessing import spawn

    if getattr(spawn.get_preparation_data, "_tasklanes_hook", False):
        return
    with _hook_lock:
        original = spawn.get_preparation_data
        if getattr(original, "_tasklanes_hook", False):
            return

        def get_preparation_data(name: str) -> dict[str, Any]:
            data: dict[str, Any] = original(name)
            if getattr(_starting, "active", False):
                path = data.get("init_main_from_path")
                if path is not None and not os.path.isfile(path):
                    del data["init_main_from_path"]
            return data

        get_preparation_data._tasklanes_hook = True  # type: ignore[attr-defined]
        get_preparation_data.__wrapped__ = original  # type: ignore[attr-defined]
        spawn.get_preparation_data = get_preparation_data


def worker_target(
    ctx: BaseContext,
    target: Callable[..., None],
    args: tuple[Any, ...],
    parent_fds: Sequence[int],
) -> tuple[Callable[..., None], tuple[Any, ...]]:
    """The `target` and `args` to give `ctx.Process` for a worker.

    Unchanged for spawn and forkserver. Under fork the arguments are not pickled, and
    the child holds a copy of every descriptor of the parent: the worker would get a
    [SharedBlock][tasklanes._processes._shared.SharedBlock] instead of the memory map it
    expects, and, holding the write end of the pool's "alive" pipe itself, would never
    see it close when the parent dies. `parent_fds` are the descriptors the child must
    close: the parent's ends of the pool's pipes, all open for as long as the pool's
    spawner runs.
    """
    if ctx.get_start_method() != "fork":
        return target, args
    # A fork made while another thread is inside an import leaves that module's import
    # lock held, forever, in the child: the child hangs on its first use of the module.
    # Our own threads import cloudpickle lazily (the first task sent by value), and the
    # worker needs it to load such a task, so finish that import here, on the thread
    # that forks, before it does (it waits for an import under way elsewhere).
    with contextlib.suppress(ImportError):
        import cloudpickle  # type: ignore[import-untyped]  # noqa: F401
    return _run_forked, (tuple(parent_fds), target, args)


def _run_forked(
    parent_fds: tuple[int, ...], target: Callable[..., None], args: tuple[Any, ...]
) -> None:
    """In a forked worker: what spawn would have handed over, then the worker."""
    for fd in parent_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    given = []
    for arg in args:
        if isinstance(arg, SharedBlock):
            arg.started()  # our inherited copy of its descriptor; the mapping stays
            arg = arg.mmap
        given.append(arg)
    target(*given)


# ---------------------------------------------------------------------- an unguarded main


def refuse_while_importing_main() -> None:
    """Called before a pool starts its workers: fail at once inside a process that is
    still starting, importing the main module.

    That happens when a script starts work at import time (no `if __name__ ==
    "__main__":`): each spawn or forkserver worker runs the script again, which asks
    for workers again, which `multiprocessing` refuses. In one of our own workers, end
    it with [EXIT_UNGUARDED_MAIN][tasklanes._processes._context.EXIT_UNGUARDED_MAIN] so
    that the parent can give the right advice; in anyone else's child, raise.
    """
    current = multiprocessing.current_process()
    if not getattr(current, "_inheriting", False):
        return
    if current.name == WORKER_NAME:
        logger.error("a tasklanes worker process exits: %s", GUARD_ADVICE)
        os._exit(EXIT_UNGUARDED_MAIN)
    raise RuntimeError(f"tasklanes cannot start worker processes here: {GUARD_ADVICE}")


def worker_exit_error(exitcode: int | None) -> RuntimeError:
    """Why a worker process exited before it was ready, as the parent understands it."""
    if exitcode == EXIT_UNGUARDED_MAIN:
        return RuntimeError(
            "a worker process exited while starting, because importing the main module "
            f"started tasklanes work again: {GUARD_ADVICE}"
        )
    if exitcode is not None and exitcode < 0:
        how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited (code {exitcode})"
    return RuntimeError(
        f"a worker process {how} before it was ready (its error output, if any, says why)"
    )
