"""How tasks travel to worker processes: by reference with `pickle`, by value with
`cloudpickle` when they must.

`pickle` sends a function or a class by name (module and qualified name), and the
worker imports it. That cannot work for:

* lambdas, closures and functions defined inside other functions: they have no name
  to import, and `pickle` refuses them;
* anything defined in the `__main__` of an interactive session -- Jupyter/IPython,
  the REPL, `python -c`, a script read from standard input: `pickle` accepts it, but
  the worker has no such module to import it from, and fails to load the chunk.

Those travel by value with `cloudpickle` (the `interactive` extra: `pip install
'tasklanes[interactive]'`), which sends code and captured variables along. Everything
else keeps plain `pickle`: faster, and a worker keeps one copy of a module's globals
(a function sent by value gets fresh globals with each chunk).

Deciding costs next to nothing on the usual path: a chunk is pickled as before; in the
first case plain `pickle` fails at once; in the second the pickle names `__main__`,
found by a byte search made only when the main module is interactive. A function found
to need `cloudpickle` is remembered, so its later chunks go straight to it.

Workers load both kinds with plain `pickle.loads`: what `cloudpickle` writes refers to
`cloudpickle`'s own helpers, which the worker imports (it runs in the same environment).
"""

from __future__ import annotations

import pickle
import types
from typing import Any

from ._context import describe_main, main_is_importable

__all__ = [
    "EXTRA_HINT",
    "check_task_function",
    "dumps_chunk",
    "dumps_task",
    "importable_by_name",
    "result_by_value",
]

EXTRA_HINT = "pip install 'tasklanes[interactive]'"

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_plain = pickle.dumps
# How a pickle names the module of a global it refers to (SHORT_BINUNICODE "__main__").
# A false positive (the same bytes inside some data) only costs a cloudpickle pass.
_MAIN_REFERENCE = b"\x8c\x08__main__"
# Errors of pickling by name (no importable name), as opposed to an object that does
# not pickle at all (a lock: TypeError), which cloudpickle cannot send either.
_BY_NAME_ERRORS = (pickle.PicklingError, AttributeError)

# Functions (and the code of plain functions) known to need cloudpickle, by id; the
# values keep the objects alive so that their ids are not reused.
_by_value: dict[int, object] = {}
_MAX_REMEMBERED = 4096


def dumps_chunk(fn: object, seq: list[Any], bare: bool = False) -> bytes:
    """Pickle a chunk, `(fn, seq)` -- `(fn, seq, True)` when `bare`: `seq` holds each
    task's one argument itself, not a tuple of them (see `_protocol`) -- for a worker
    process.

    Raises `TypeError` naming the `interactive` extra when the chunk can only travel
    by value and `cloudpickle` is not installed.
    """
    obj = (fn, seq, True) if bare else (fn, seq)
    if fn is not None and _by_value.get(id(fn)) is fn:
        return _by_value_dumps(obj, None)
    try:
        data = _plain(obj, _PROTOCOL)
    except Exception as exc:
        data = _by_value_dumps(obj, exc)
        _remember_if_needed(fn)
        return data
    if not main_is_importable() and _MAIN_REFERENCE in data:
        data = _by_value_dumps(obj, None)
        _remember_if_needed(fn)
    return data


def dumps_task(task: object) -> bytes:
    """Pickle one task the way [dumps_chunk][tasklanes._processes._pickling.dumps_chunk]
    would (used to find which task of a chunk does not pickle)."""
    try:
        data = _plain(task, _PROTOCOL)
    except Exception as exc:
        return _by_value_dumps(task, exc)
    if not main_is_importable() and _MAIN_REFERENCE in data:
        return _by_value_dumps(task, None)
    return data


def check_task_function(task: object, index: int) -> None:
    """Refuse, before anything runs, a cpu task whose function cannot reach a worker.

    A function that pickles by reference passes. One that must travel by value (a
    lambda, a closure, a function of an interactive `__main__`) passes if
    `cloudpickle` can send it, and is remembered so that its chunks skip the plain
    attempt; without `cloudpickle` the `TypeError` says so and names the extra.
    Arguments are pickled with their chunk: a task whose arguments do not pickle fails
    alone, naming its index.
    """
    from .._call import unwrap_callable

    fn = unwrap_callable(task)
    key = _key(fn)
    if _by_value.get(id(key)) is key:
        return
    name = getattr(fn, "__qualname__", None) or repr(fn)
    error: Exception | None = None
    try:
        data = _plain(fn, _PROTOCOL)
    except Exception as exc:
        error = exc
    else:
        if _MAIN_REFERENCE not in data or main_is_importable():
            return  # by reference, as always
    reason = _why_by_value(fn, error)
    if reason is None:  # it does not pickle at all: cloudpickle would not help
        raise TypeError(
            f"task {index} could not be pickled for kind='cpu': its function {name!r} "
            f"does not pickle ({error}); use a module-level function"
        ) from error
    cloudpickle = _cloudpickle()
    if cloudpickle is None:
        raise TypeError(
            f"task {index} calls {name!r}, {reason}: it can reach a worker process only "
            f"by value, which needs cloudpickle: {EXTRA_HINT} (or define it at the top "
            "of a module and import it)"
        ) from error
    try:
        cloudpickle.dumps(fn, protocol=_PROTOCOL)
    except Exception as exc:
        raise TypeError(
            f"task {index} could not be pickled for kind='cpu': its function {name!r} "
            f"does not pickle, even by value ({exc})"
        ) from exc
    _remember(fn)


def importable_by_name(module: str | None, qualname: str) -> bool:
    """Whether a worker process can import `module.qualname` by name.

    Not for a lambda or what is defined inside a function, nor for what an
    interactive `__main__` defines (see
    [main_is_importable][tasklanes._processes._context.main_is_importable]).
    """
    if not module or "<locals>" in qualname or "<lambda>" in qualname:
        return False
    return module != "__main__" or main_is_importable()


def result_by_value(value: object) -> bytes | None:
    """In a worker: pickle a result that plain `pickle` refused, with `cloudpickle`.

    A task sent by value may return an instance of a class defined next to it (in a
    notebook, say): the worker cannot name that class, but `cloudpickle` can send it,
    and the parent gets its own class back. None when that fails too, or when
    `cloudpickle` is missing.
    """
    cloudpickle = _cloudpickle()
    if cloudpickle is None:
        return None
    try:
        data: bytes = cloudpickle.dumps(value, protocol=_PROTOCOL)
    except Exception:
        return None
    return data


def _by_value_dumps(obj: object, plain_error: Exception | None) -> bytes:
    cloudpickle = _cloudpickle()
    if cloudpickle is None:
        if plain_error is None:
            raise TypeError(
                f"it refers to something defined in the __main__ module of {describe_main()}, "
                "which worker processes cannot import; it can travel by value with "
                f"cloudpickle: {EXTRA_HINT}"
            )
        if isinstance(plain_error, _BY_NAME_ERRORS):
            raise TypeError(
                f"{plain_error} (a lambda, a closure or a function defined inside another "
                f"function can travel by value with cloudpickle: {EXTRA_HINT})"
            ) from plain_error
        raise plain_error
    try:
        data: bytes = cloudpickle.dumps(obj, protocol=_PROTOCOL)
    except Exception:
        if plain_error is not None:
            raise plain_error from None  # the familiar message, not cloudpickle's
        raise
    return data


def _why_by_value(fn: object, error: Exception | None) -> str | None:
    """Why `fn` must travel by value; None if it does not pickle at all."""
    qualname = getattr(fn, "__qualname__", "")
    if "<lambda>" in qualname:
        return "a lambda"
    if "<locals>" in qualname:
        return "a function defined inside another function"
    if error is None:
        return (
            f"defined in the __main__ module of {describe_main()}, which worker processes "
            "cannot import"
        )
    if isinstance(error, _BY_NAME_ERRORS):
        return f"which pickle cannot send by name ({error})"
    return None


def _key(fn: object) -> object:
    # Lambdas made in a loop are distinct functions with one code object: decide once.
    return fn.__code__ if isinstance(fn, types.FunctionType) else fn


def _remember(fn: object) -> None:
    if len(_by_value) >= _MAX_REMEMBERED:  # functions are few; bounds a pathological case
        _by_value.clear()
    _by_value[id(fn)] = fn
    key = _key(fn)
    if key is not fn:
        _by_value[id(key)] = key


def _remember_if_needed(fn: object) -> None:
    """Remember `fn` after a chunk of it needed cloudpickle, if `fn` itself (not only
    some argument) needs it."""
    if fn is None or not isinstance(fn, (types.FunctionType, type)):
        return
    try:
        data = _plain(fn, _PROTOCOL)
    except Exception:
        _remember(fn)
        return
    if not main_is_importable() and _MAIN_REFERENCE in data:
        _remember(fn)


def _cloudpickle() -> Any:
    """The `cloudpickle` module, imported on first need; None if it is not installed."""
    try:
        import cloudpickle  # type: ignore[import-untyped]
    except ImportError:
        return None
    return cloudpickle
