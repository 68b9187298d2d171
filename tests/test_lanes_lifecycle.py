"""Lane lifecycle (tasklanes/_lanes/_base.py): a closed lane refuses work and starts nothing.

An iterator made before ``Scheduler.close()`` and iterated after used to rebuild the
lane's pool (threads or processes nobody owned, left running until exit).
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from tasklanes import Scheduler, call

from . import _tasks as T
from .conftest import child_pids

pytestmark = pytest.mark.anyio


async def _ident(x: int) -> int:
    await anyio.sleep(0)
    return x


def _fn(kind: str) -> Any:
    return _ident if kind == "io" else T.double


@pytest.mark.parametrize("kind", ["io", "blocking", "cpu"])
@pytest.mark.parametrize("api", ["amap", "as_completed"])
async def test_an_iterator_made_before_close_refuses_to_run_after_it(
    kind: str, api: str
) -> None:
    sched = Scheduler(blocking_limit=4, cpu_limit=2)
    if api == "amap":
        iterator = sched.amap(_fn(kind), range(4), kind=kind)
    else:
        fn = _fn(kind)
        tasks = [call(fn, i) if kind != "io" else fn(i) for i in range(4)]
        iterator = sched.as_completed(tasks, kind=kind)
    threads = set(threading.enumerate())
    children = child_pids()
    sched.close()
    with pytest.raises(RuntimeError, match="closed"):
        async with iterator:
            async for _ in iterator:
                pass
    started = [t.name for t in set(threading.enumerate()) - threads if t.is_alive()]
    started = [n for n in started if not n.startswith("Trio thread")]
    assert not started, f"a closed scheduler started threads: {started}"
    assert child_pids() - children <= set(), "a closed scheduler started processes"


@pytest.mark.parametrize("kind", ["blocking", "cpu"])
async def test_a_used_lane_refuses_work_after_close(kind: str) -> None:
    sched = Scheduler(blocking_limit=2, cpu_limit=1)
    first = await sched.run_all([call(T.double, 1)], kind=kind)
    assert first == [2]
    iterator = sched.amap(T.double, range(3), kind=kind)
    sched.close()
    threads = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="closed"):
        async with iterator:
            async for _ in iterator:
                pass
    assert not [t for t in set(threading.enumerate()) - threads if t.is_alive()
                and not t.name.startswith("Trio thread")]
