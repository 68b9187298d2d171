"""The bad-input table: every wrong argument or task form raises a clear ``ValueError``
or ``TypeError`` before any task starts.

Each batch row puts a good *canary* task first and the bad input after it (or bad
arguments around good tasks): the canary must never run, and the scheduler must show
no task taken. The table is the one in docs/errors.md ("Bad input"); keep them in step.
"""

from __future__ import annotations

import concurrent.futures
import functools
import gc
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

import tasklanes
from tasklanes import Scheduler, amap, as_completed, call, offload, run_all, run_all_sync

from . import _reliability_tasks as T

pytestmark = [pytest.mark.timeout(30)]

# ------------------------------------------------------------------ task forms


async def async_fn() -> int:
    return 1


def sync_fn() -> int:
    return 1


class Awaitable:
    def __await__(self) -> Iterator[None]:
        yield from ()
        return None


class Thing:
    def method(self) -> int:
        return 1

    async def amethod(self) -> int:
        return 1


def closure() -> Callable[[], int]:
    def inner() -> int:
        return 1

    return inner


# ------------------------------------------------------------------ the table


@dataclass
class Ctx:
    """What a row needs: a canary task per kind that leaves a mark when it runs."""

    mark: Path
    sched: Scheduler

    def canary(self, kind: str) -> Any:
        if kind == "io":
            return call(io_canary, str(self.mark))
        return call(T.count_side_effect, str(self.mark))


async def io_canary(path: str) -> int:
    return T.count_side_effect(path)


@dataclass
class Row:
    id: str
    make: Callable[[Ctx], Any]  # returns an awaitable, a BatchIterator, or raises itself
    error: type[Exception]
    match: str
    marks: tuple[Any, ...] = ()


G = call(sync_fn)  # a good blocking/cpu task
LOCK = threading.Lock()  # its methods do not pickle, by reference or by value


def without_cloudpickle(make: Callable[[Ctx], Any]) -> Callable[[Ctx], Any]:
    """The row as it runs without the interactive extra (``import cloudpickle`` fails)."""

    async def run(c: Ctx) -> None:
        saved = sys.modules.get("cloudpickle")
        sys.modules["cloudpickle"] = None  # type: ignore[assignment]
        try:
            result = make(c)
            if isinstance(result, tasklanes.BatchIterator):
                async with result as it:
                    async for _ in it:
                        pass
            else:
                await result
        finally:
            if saved is None:
                del sys.modules["cloudpickle"]
            else:
                sys.modules["cloudpickle"] = saved

    return run


def batch(kind: str, *bad: Any, **kw: Any) -> Callable[[Ctx], Any]:
    """``sched.run_all([canary, *bad], kind, **kw)``."""
    return lambda c: c.sched.run_all([c.canary(kind), *bad], kind, **kw)


def api(kind: str, *bad: Any, **kw: Any) -> Callable[[Ctx], Any]:
    """The module-level ``run_all`` on the default scheduler."""
    return lambda c: run_all([c.canary(kind), *bad], kind, **kw)


KIND_VALID = "unknown kind .*'io'.*'blocking'.*'cpu'"
LIMIT_TYPE = "limit must be an int >= 1 or None, got"
LIMIT_VALUE = "limit must be >= 1"
TIMEOUT_TYPE = "timeout must be a number of seconds or None"
TIMEOUT_VALUE = "timeout must be > 0 seconds"
NOT_ITERABLE = "tasks must be an iterable or async iterable of tasks, got"
SYNC_ON_IO = r"task 1 .* is a sync callable, which kind='io' cannot await: use kind='blocking'.*kind='cpu'"
NOT_IO = r"task 1 .* is not a task for kind='io': give a coroutine, an awaitable, or a zero-argument callable"
AWAITABLE_ON = r"task 1 .* is a coroutine or awaitable, which kind='{}' cannot run: use kind='io'"
ASYNC_ON = r"task 1 .* calls an async function, which kind='{}' cannot await: use kind='io'"
OFFLOADED_ON = r"whose call returns an awaitable \(an @offload function\?\), which kind='{}' cannot await: give its plain function \(offloaded_square.__wrapped__\)"
NOT_CALLABLE = r"task 1 .* is not a task for kind='{}': give a zero-argument callable"
NO_PICKLE = r"task 1 calls .*<(?:locals|lambda)>.*, which cannot be sent to a worker process: kind='cpu' needs a module-level function"
NO_CLOUDPICKLE = r"task 1 calls '.*', (a lambda|a function defined inside another function): it can reach a worker process only by value, which needs cloudpickle: pip install 'tasklanes\[interactive\]'"
NOT_PICKLABLE = r"task 1 could not be pickled for kind='cpu': its function 'lock.acquire' does not pickle \(cannot pickle '_thread.lock' object\); use a module-level function"

ROWS: list[Row] = [
    # -- batch arguments (run_all, as_completed, amap, Scheduler.run_all)
    Row("kind='gpu'", lambda c: c.sched.run_all([c.canary("blocking"), G], "gpu"), ValueError, KIND_VALID),
    Row("kind=None", lambda c: run_all([G], None), ValueError, KIND_VALID),  # type: ignore[call-overload]
    Row("kind='IO'", lambda c: run_all([G], "IO"), ValueError, KIND_VALID),
    Row("limit=0", batch("blocking", G, limit=0), ValueError, LIMIT_VALUE),
    Row("limit=-1", batch("io", limit=-1), ValueError, LIMIT_VALUE),
    Row("limit=2.5", batch("cpu", limit=2.5), TypeError, LIMIT_TYPE),
    Row("limit=True", batch("blocking", limit=True), TypeError, LIMIT_TYPE),
    Row("limit='4'", api("io", limit="4"), TypeError, LIMIT_TYPE),
    Row("timeout=0", batch("blocking", timeout=0), ValueError, TIMEOUT_VALUE),
    Row("timeout=-1", batch("cpu", timeout=-1), ValueError, TIMEOUT_VALUE),
    Row("timeout=nan", batch("io", timeout=float("nan")), ValueError, TIMEOUT_VALUE),
    Row("timeout='1'", api("blocking", timeout="1"), TypeError, TIMEOUT_TYPE),
    Row("timeout=True", batch("cpu", timeout=True), TypeError, TIMEOUT_TYPE),
    Row("progress=5", batch("blocking", progress=5), TypeError, "progress must be True .*, False, or a callable"),
    Row("tasks=5", lambda c: c.sched.run_all(5, "blocking"), TypeError, NOT_ITERABLE + " int"),
    Row("tasks=None", lambda c: run_all(None, "cpu"), TypeError, NOT_ITERABLE + " NoneType"),  # type: ignore[call-overload]
    Row("tasks='abc'", lambda c: c.sched.run_all("abc", "blocking"), TypeError, NOT_ITERABLE + " str"),
    Row("tasks=b'ab'", lambda c: c.sched.run_all(b"ab", "cpu"), TypeError, NOT_ITERABLE + " bytes"),
    Row("scheduler='x'", api("blocking", scheduler="x"), TypeError, re.escape("scheduler must be a Scheduler or None (the default one), got str")),
    # -- task forms, io
    Row("io: call(sync_fn)", batch("io", call(sync_fn)), TypeError, SYNC_ON_IO),
    Row("io: sync_fn", batch("io", sync_fn), TypeError, SYNC_ON_IO),
    Row("io: partial(sync_fn)", batch("io", functools.partial(sync_fn)), TypeError, SYNC_ON_IO),
    Row("io: bound sync method", batch("io", Thing().method), TypeError, SYNC_ON_IO),
    Row("io: a class", batch("io", dict), TypeError, SYNC_ON_IO),
    Row("io: a builtin", batch("io", print), TypeError, SYNC_ON_IO),
    Row("io: 5", batch("io", 5), TypeError, NOT_IO),
    Row("io: None", batch("io", None), TypeError, NOT_IO),
    Row("io: 'https://...'", batch("io", "https://example.invalid"), TypeError, NOT_IO),
    # -- task forms, blocking and cpu
    *[
        row
        for kind in ("blocking", "cpu")
        for row in [
            Row(f"{kind}: coroutine object", lambda c, k=kind: c.sched.run_all([c.canary(k), async_fn()], k), TypeError, AWAITABLE_ON.format(kind)),
            Row(f"{kind}: awaitable object", batch(kind, Awaitable()), TypeError, AWAITABLE_ON.format(kind)),
            Row(f"{kind}: call(async_fn)", batch(kind, call(async_fn)), TypeError, ASYNC_ON.format(kind)),
            Row(f"{kind}: async_fn", batch(kind, async_fn), TypeError, ASYNC_ON.format(kind)),
            Row(f"{kind}: partial(async_fn)", batch(kind, functools.partial(async_fn)), TypeError, ASYNC_ON.format(kind)),
            Row(f"{kind}: bound async method", batch(kind, Thing().amethod), TypeError, ASYNC_ON.format(kind)),
            Row(f"{kind}: call(offloaded_fn)", batch(kind, call(T.offloaded_square, 1)), TypeError, OFFLOADED_ON.format(kind)),
            Row(f"{kind}: 5", batch(kind, 5), TypeError, NOT_CALLABLE.format(kind)),
            Row(f"{kind}: None", batch(kind, None), TypeError, NOT_CALLABLE.format(kind)),
            Row(f"{kind}: 'ls -l'", batch(kind, "ls -l"), TypeError, NOT_CALLABLE.format(kind)),
        ]
    ],
    # -- task forms, cpu only: must pickle (lambdas and closures by value, with the
    #    interactive extra: cloudpickle)
    Row("cpu: call(lock.acquire)", batch("cpu", call(LOCK.acquire)), TypeError, NOT_PICKLABLE),
    Row("cpu without cloudpickle: lambda", without_cloudpickle(batch("cpu", lambda: 1)), TypeError, NO_CLOUDPICKLE),
    Row("cpu without cloudpickle: call(lambda)", without_cloudpickle(batch("cpu", call(lambda: 1))), TypeError, NO_CLOUDPICKLE),
    Row("cpu without cloudpickle: closure", without_cloudpickle(batch("cpu", call(closure()))), TypeError, NO_CLOUDPICKLE),
    Row("cpu without cloudpickle: partial(closure)", without_cloudpickle(batch("cpu", functools.partial(closure()))), TypeError, NO_CLOUDPICKLE),
    Row(
        "cpu on an executor: lambda",
        lambda c: Scheduler(cpu_executor=c.executor).run_all([c.canary("cpu"), lambda: 1], "cpu"),  # type: ignore[attr-defined]
        TypeError,
        NO_PICKLE,
    ),
    # -- the iterators
    Row("as_completed(kind='gpu')", lambda c: c.sched.as_completed([G], "gpu"), ValueError, KIND_VALID),
    Row("as_completed(limit=0)", lambda c: as_completed([G], "blocking", limit=0), ValueError, LIMIT_VALUE),
    Row("as_completed(tasks=5)", lambda c: c.sched.as_completed(5, "blocking"), TypeError, NOT_ITERABLE),
    Row("as_completed: sync task on io", lambda c: c.sched.as_completed([c.canary("io"), call(sync_fn)]), TypeError, SYNC_ON_IO),
    Row("amap(5, items)", lambda c: amap(5, [1]), TypeError, "amap.. needs a callable first, got int"),  # type: ignore[call-overload]
    Row("amap(fn, 5)", lambda c: c.sched.amap(T.square, 5, "cpu"), TypeError, "amap.. needs an iterable or async iterable of items, got int"),
    Row("amap(fn, 'abc')", lambda c: c.sched.amap(T.square, "abc", "cpu"), TypeError, "amap.. needs an iterable or async iterable of items, got str"),
    Row("amap(sync_fn) on io", lambda c: c.sched.amap(T.square, [1]), TypeError, "is a sync callable, which kind='io' cannot await"),
    Row("amap(async_fn) on cpu", lambda c: c.sched.amap(io_canary, [1], "cpu"), TypeError, "calls an async function, which kind='cpu' cannot await"),
    Row("amap(offloaded_fn) on cpu", lambda c: c.sched.amap(T.offloaded_square, [1], "cpu"), TypeError, OFFLOADED_ON.format("cpu")),
    Row("amap(lambda) on cpu without cloudpickle", without_cloudpickle(lambda c: c.sched.amap(lambda x: x, [1], "cpu")), TypeError, r"a lambda: .*tasklanes\[interactive\]"),
    Row("amap(timeout=-1)", lambda c: c.sched.amap(T.square, [1], "cpu", timeout=-1), ValueError, TIMEOUT_VALUE),
    # -- call
    Row("call(5)", lambda c: call(5), TypeError, "call.. needs a callable first, got int"),  # type: ignore[call-overload]
    # -- Scheduler(...)
    Row("Scheduler(io_limit=0)", lambda c: Scheduler(io_limit=0), ValueError, "io_limit must be >= 1, got 0"),
    Row("Scheduler(io_limit=None)", lambda c: Scheduler(io_limit=None), TypeError, "io_limit must be an int >= 1"),  # type: ignore[arg-type]
    Row("Scheduler(blocking_limit=1.5)", lambda c: Scheduler(blocking_limit=1.5), TypeError, "blocking_limit must be an int >= 1, got float"),  # type: ignore[arg-type]
    Row("Scheduler(cpu_limit=0)", lambda c: Scheduler(cpu_limit=0), ValueError, "cpu_limit must be >= 1 or None"),
    Row("Scheduler(cpu_limit='2')", lambda c: Scheduler(cpu_limit="2"), TypeError, "cpu_limit must be an int >= 1 or None"),  # type: ignore[arg-type]
    Row("Scheduler(cpu_executor=object())", lambda c: Scheduler(cpu_executor=object()), TypeError, "cpu_executor must be a concurrent.futures.Executor"),  # type: ignore[arg-type]
    Row("Scheduler(mp_context='bogus')", lambda c: Scheduler(mp_context="bogus"), ValueError, "cannot find context for 'bogus'"),
    Row("Scheduler(mp_context=5)", lambda c: Scheduler(mp_context=5), TypeError, "mp_context"),  # type: ignore[arg-type]
    # -- @offload
    Row("offload(kind='gpu')", lambda c: offload(kind="gpu"), ValueError, KIND_VALID),  # type: ignore[call-overload]
    Row("offload(limit=0)", lambda c: offload(limit=0), ValueError, LIMIT_VALUE),
    Row("offload(timeout=-1)", lambda c: offload(timeout=-1), ValueError, TIMEOUT_VALUE),
    Row("offload(scheduler='x')", lambda c: offload(scheduler="x"), TypeError, re.escape("scheduler must be a Scheduler or None (the default one), got str")),  # type: ignore[call-overload]
    Row("offload(5)", lambda c: offload(5), TypeError, "@offload decorates a function, got int"),  # type: ignore[call-overload]
    Row("@offload(kind='io') on a sync def", lambda c: offload(kind="io")(sync_fn), TypeError, r"@offload\(kind='io'\) needs an async def function; sync_fn is sync"),
    Row("@offload(kind='cpu') on an async def", lambda c: offload(kind="cpu")(async_fn), TypeError, r"@offload\(kind='cpu'\) needs a sync function; async_fn is async def: use kind='io'"),
    Row("@offload on an async def", lambda c: offload(async_fn), TypeError, r"@offload\(kind='blocking'\) needs a sync function"),
]


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        yield ex


@pytest.mark.anyio
@pytest.mark.parametrize(  # the checks do not depend on the loop: two of them suffice
    "anyio_backend",
    [pytest.param(("asyncio", {}), id="asyncio"), pytest.param(("trio", {}), id="trio")],
)
@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=r.marks) for r in ROWS])
async def test_bad_input(row: Row, tmp_path: Path, executor: concurrent.futures.Executor) -> None:
    mark = tmp_path / "ran"
    with Scheduler(cpu_limit=1, blocking_limit=2) as sched:
        ctx = Ctx(mark, sched)
        ctx.executor = executor  # type: ignore[attr-defined]
        with pytest.raises(row.error) as info:
            result = row.make(ctx)
            if isinstance(result, tasklanes.BatchIterator):
                async with result as it:
                    async for _ in it:
                        pass
            elif hasattr(result, "__await__"):
                await result
        # The message is the documented one (a clear one), whole.
        assert re.search(row.match, str(info.value)), str(info.value)
        del info
        gc.collect()  # a half-built object must not complain when it is collected
        await anyio.sleep(0.02)  # a task that did start would have left its mark by now
        assert not mark.exists(), "a task ran although the input was refused"
        for kind, snap in sched.stats().items():
            assert (snap.running, snap.waiting, snap.completed, snap.failed) == (0, 0, 0, 0), (kind, snap)


SYNC_ROWS = [
    pytest.param(lambda c: run_all_sync([c.canary("blocking"), G], "gpu"), ValueError, KIND_VALID, id="kind='gpu'"),
    pytest.param(lambda c: run_all_sync([c.canary("cpu"), G], "cpu", limit=0), ValueError, LIMIT_VALUE, id="limit=0"),
    pytest.param(lambda c: run_all_sync([c.canary("blocking")], "blocking", timeout=-2), ValueError, TIMEOUT_VALUE, id="timeout=-2"),
    pytest.param(lambda c: run_all_sync(5, "blocking"), TypeError, NOT_ITERABLE, id="tasks=5"),
    pytest.param(lambda c: run_all_sync([c.canary("io"), call(sync_fn)]), TypeError, SYNC_ON_IO, id="io: call(sync_fn)"),
    pytest.param(lambda c: run_all_sync([c.canary("cpu"), call(LOCK.acquire)], "cpu"), TypeError, NOT_PICKLABLE, id="cpu: call(lock.acquire)"),
    pytest.param(lambda c: run_all_sync([c.canary("blocking"), call(async_fn)], "blocking"), TypeError, ASYNC_ON.format("blocking"), id="blocking: call(async_fn)"),
]


@pytest.mark.parametrize(("make", "error", "match"), SYNC_ROWS)
def test_bad_input_sync(make: Callable[[Ctx], Any], error: type[Exception], match: str, tmp_path: Path) -> None:
    """``run_all_sync`` checks the same things, before its event loop runs a task."""
    mark = tmp_path / "ran"
    with Scheduler(cpu_limit=1) as sched:
        with pytest.raises(error, match=match):
            make(Ctx(mark, sched))
        assert not mark.exists()


def test_run_all_sync_inside_a_running_loop(tmp_path: Path) -> None:
    """Not a ValueError/TypeError, but refused as early: a RuntimeError with the fix."""

    async def main(path: str) -> None:
        with pytest.raises(RuntimeError, match=r"notebook cell .* write 'await run_all\(...\)'"):
            run_all_sync([call(T.count_side_effect, path)], "blocking")

    mark = tmp_path / "ran"
    anyio.run(main, str(mark))
    assert not mark.exists()


def test_closed_scheduler_refuses_work() -> None:
    sched = Scheduler()
    sched.close()
    with pytest.raises(RuntimeError, match="this Scheduler is closed; create a new one"):
        sched.run_all_sync([G], "blocking")


def test_every_row_is_documented() -> None:
    """docs/errors.md's "Bad input" table lists every row of this table."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text()
    section = doc.split("## Bad input", 1)
    assert len(section) == 2, "docs/errors.md has no 'Bad input' section"
    # The cpu rows shared with blocking are listed once, as "blocking: ... (and cpu)".
    missing = [
        r.id
        for r in ROWS
        if f"`{r.id}`" not in section[1]
        and f"`{r.id.replace('cpu: ', 'blocking: ', 1)}`" not in section[1]
    ]
    assert not missing, f"rows missing from docs/errors.md: {missing}"
