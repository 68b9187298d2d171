"""Limiter and Limiters: one budget across calls, event loops and threads."""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time

import anyio
import pytest

from tasklanes import Limiter, Limiters
from tasklanes._limits import acquire_all, ordered_limiters, resolve_limiter_arg, try_acquire_all

pytestmark = pytest.mark.anyio


# -- arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"concurrency": 0}, ValueError, "concurrency must be >= 1"),
        ({"concurrency": 1.5}, TypeError, "concurrency must be an int"),
        ({"concurrency": True}, TypeError, "concurrency must be an int"),
        ({"rate": 0}, ValueError, "rate must be a finite number > 0"),
        ({"rate": float("inf")}, ValueError, "rate must be a finite number > 0"),
        ({"rate": "10"}, TypeError, "rate must be a number"),
        ({"rate": 1, "burst": 0}, ValueError, "burst must be >= 1"),
        ({"rate": 1, "burst": 2.0}, TypeError, "burst must be an int"),
        ({"burst": 3}, ValueError, "burst only applies with a rate"),
        ({"name": 3}, TypeError, "name must be a str"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        Limiter(**kwargs)  # type: ignore[arg-type]
    if "name" not in kwargs:
        with pytest.raises(error, match=text):
            Limiters(**kwargs)  # type: ignore[arg-type]


def test_repr_and_state() -> None:
    lim = Limiter(concurrency=2, rate=5, burst=3, name="api")
    assert repr(lim) == "<Limiter name='api' concurrency=2 rate=5 burst=3 held=0 waiting=0>"
    assert lim.try_acquire() and lim.try_acquire()
    assert not lim.try_acquire()  # concurrency 2 is taken
    assert lim.held == 2 and not lim.idle()
    lim.release()
    lim.release()
    with pytest.raises(RuntimeError, match="released more often"):
        lim.release()


def test_limiter_arg_resolution() -> None:
    a, b = Limiter(concurrency=1), Limiter(rate=1)
    assert resolve_limiter_arg(None) is None
    assert resolve_limiter_arg(a)("task") == (a,)  # type: ignore[misc]
    # a sequence is deduplicated and put in the global order
    assert resolve_limiter_arg([b, a, b])("task") == (a, b)  # type: ignore[misc]
    assert resolve_limiter_arg(lambda t: [b, a])("x") == (a, b)  # type: ignore[misc]
    with pytest.raises(TypeError, match="limiter must be a Limiter"):
        resolve_limiter_arg(5)
    with pytest.raises(TypeError, match="takes Limiter objects"):
        resolve_limiter_arg([a, "b"])
    with pytest.raises(TypeError, match="must return a Limiter"):
        resolve_limiter_arg(lambda t: 3)("x")  # type: ignore[misc]


# -- concurrency ------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_concurrency_bound_and_fifo(concurrency: int) -> None:
    lim = Limiter(concurrency=concurrency)
    running = 0
    peak = 0
    order: list[int] = []

    async def task(i: int) -> None:
        nonlocal running, peak
        async with lim:
            order.append(i)
            running += 1
            peak = max(peak, running)
            await anyio.sleep(0.01)
            running -= 1

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(task, i)
            await anyio.sleep(0)  # queue them in this order
    assert peak == concurrency
    if concurrency == 1:
        # first come, first served (with two admitted in one tick, trio may resume
        # them in either order, so the order is observable with one at a time)
        assert order == list(range(10))
    else:
        assert sorted(order) == list(range(10))
    assert lim.held == 0 and lim.waiting == 0


async def test_cancelled_head_waiter_leaves_and_the_next_is_served() -> None:
    lim = Limiter(concurrency=1)
    await lim.acquire()
    got: list[str] = []

    async def waiter(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            await lim.acquire()
            got.append(name)
            lim.release()

    first, second = anyio.CancelScope(), anyio.CancelScope()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "first", first)
            await anyio.sleep(0.02)
            tg.start_soon(waiter, "second", second)
            await anyio.sleep(0.02)
            assert lim.waiting == 2
            first.cancel()  # the head of the queue gives up
            await anyio.sleep(0.02)
            assert lim.waiting == 1
            lim.release()
    assert got == ["second"]
    assert lim.held == 0 and lim.waiting == 0


async def test_cancel_while_waiting_holds_nothing() -> None:
    lim = Limiter(concurrency=1)
    await lim.acquire()
    with anyio.move_on_after(0.05):
        await lim.acquire()
    assert lim.held == 1 and lim.waiting == 0
    lim.release()
    assert lim.try_acquire()
    lim.release()


async def test_all_or_nothing_gives_back_what_it_took() -> None:
    a, b = Limiter(concurrency=1), Limiter(concurrency=1)
    both = ordered_limiters([b, a])
    await b.acquire()  # the second one in the order is busy
    with anyio.move_on_after(0.05):
        await acquire_all(both)
    assert a.held == 0 and b.held == 1  # `a` was taken, then given back on cancel
    assert not try_acquire_all(both) and a.held == 0
    b.release()
    assert try_acquire_all(both) and a.held == b.held == 1


async def test_no_deadlock_on_two_limiters_in_opposite_orders() -> None:
    a, b = Limiter(concurrency=1), Limiter(concurrency=1)
    done = 0

    async def task(order: list[Limiter]) -> None:
        nonlocal done
        lims = ordered_limiters(order)
        await acquire_all(lims)
        await anyio.sleep(0.001)
        for lim in lims:
            lim.release()
        done += 1

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(task, [a, b] if i % 2 else [b, a])
    assert done == 50


# -- rate --------------------------------------------------------------------------------


async def test_rate_spaces_starts() -> None:
    lim = Limiter(rate=50)
    starts: list[float] = []
    with anyio.fail_after(20):
        for _ in range(21):
            await lim.acquire()
            lim.release()
            starts.append(time.monotonic())
    elapsed = starts[-1] - starts[0]
    # never faster than the rate: the k-th start comes at least k intervals after the
    # first, less the catch-up for late wake-ups (a quarter interval, once, not per start)
    assert elapsed >= 20 / 50 - 0.25 / 50
    # ...and not wildly slower (a generous bound for a loaded CI box)
    assert elapsed < 20 / 50 * 3
    # and no two starts closer than three quarters of the interval
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.75 / 50 - 0.003  # (less a little: the stamps come after)


async def test_burst_starts_at_once_then_paces() -> None:
    lim = Limiter(rate=10, burst=5)
    t0 = time.monotonic()
    for _ in range(5):
        assert lim.try_acquire()
    assert not lim.try_acquire()  # the bucket is empty
    await lim.acquire()  # the 6th waits ~0.1 s
    assert time.monotonic() - t0 >= 0.1 - 0.025
    for _ in range(6):
        lim.release()


def test_idle_only_when_bucket_full() -> None:
    lim = Limiter(rate=100)
    assert lim.idle()
    assert lim.try_acquire()
    lim.release()
    assert not lim.idle()  # its bucket refills in 10 ms
    time.sleep(0.03)
    assert lim.idle()


# -- shared across loops and threads ------------------------------------------------------


def test_two_event_loops_in_two_threads_share_one_limiter() -> None:
    import trio

    lim = Limiter(concurrency=1, rate=200)
    lock = threading.Lock()
    inside = 0
    peak = 0
    count = 0

    async def work() -> None:
        nonlocal inside, peak, count
        for _ in range(20):
            async with lim:
                with lock:
                    inside += 1
                    peak = max(peak, inside)
                await anyio.sleep(0.001)
                with lock:
                    inside -= 1
                    count += 1

    errors: list[BaseException] = []

    def run(runner: str) -> None:
        try:
            if runner == "trio":
                trio.run(work)
            else:
                asyncio.run(work())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in ("asyncio", "trio")]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert count == 40 and peak == 1  # one budget: never two holders, on either loop
    assert time.monotonic() - t0 >= 39 / 200 - 0.25 / 200  # one rate across both loops


def test_threads_block_on_a_shared_limiter() -> None:
    lim = Limiter(concurrency=2)
    lock = threading.Lock()
    inside = peak = 0

    def work() -> None:
        nonlocal inside, peak
        for _ in range(10):
            with lim:
                with lock:
                    inside += 1
                    peak = max(peak, inside)
                time.sleep(0.001)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert peak == 2 and lim.held == 0


def test_acquire_blocking_timeout() -> None:
    lim = Limiter(concurrency=1)
    assert lim.acquire_blocking()
    assert lim.acquire_blocking(timeout=0.05) is False
    assert lim.waiting == 0
    lim.release()


async def test_thread_waiter_woken_by_async_release() -> None:
    lim = Limiter(concurrency=1)
    await lim.acquire()
    got = threading.Event()

    def blocked() -> None:
        with lim:
            got.set()

    thread = threading.Thread(target=blocked)
    thread.start()
    await anyio.sleep(0.05)
    assert not got.is_set() and lim.waiting == 1
    lim.release()
    await anyio.to_thread.run_sync(thread.join, 10)
    assert got.is_set()


# -- Limiters --------------------------------------------------------------------------------


def test_limiters_same_key_same_limiter() -> None:
    per_host = Limiters(concurrency=2, rate=5)
    a = per_host["a.example"]
    assert per_host["a.example"] is a
    assert per_host["b.example"] is not a
    assert a.concurrency == 2 and a.rate == 5 and a.name == "a.example"


def test_limiters_memory_bounded_for_10000_keys() -> None:
    per_key = Limiters(concurrency=1)
    busy = per_key["busy"]
    assert busy.try_acquire()
    for i in range(10_000):
        lim = per_key[i]
        assert lim.try_acquire()
        lim.release()
    del lim
    # The table was swept as it grew: far fewer than 10,000 keys kept...
    assert len(per_key) < 2048
    # ...and a sweep now keeps only the key in use.
    assert per_key.sweep() == 1
    gc.collect()
    assert len(per_key._weak) <= 2
    assert per_key["busy"] is busy  # in use: never replaced
    busy.release()


def test_limiters_keep_a_limiter_still_referenced() -> None:
    per_key = Limiters(rate=1000)
    kept = per_key["k"]
    time.sleep(0.01)
    per_key.sweep()
    assert len(per_key) == 0
    assert per_key["k"] is kept  # the weak table finds it again
