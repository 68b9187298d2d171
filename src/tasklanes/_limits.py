"""Budgets shared by every call, lane, event loop and thread: [`Limiter`][tasklanes.Limiter]
and [`Limiters`][tasklanes.Limiters].

A limiter cannot be an anyio or asyncio primitive: those belong to one event loop,
and a budget such as "10 requests per second to this API" belongs to the process.
So the state lives behind a `threading.Lock`, and a waiter registers a wake-up
callback that the releasing side calls from whatever thread it runs on: an event
loop's `call_soon_threadsafe` (trio: the token's `run_sync_soon`) for async
waiters, a `threading.Event` for threads.

Rate is a GCRA (generic cell rate algorithm, a token bucket kept as one number, the
*theoretical arrival time* `tat`): a start is allowed when `tat - (burst - 1) / rate`
has passed, and moves `tat` on by `1 / rate`. Only the head of the FIFO queue ever
sleeps for a rate slot, and it sleeps until the slot, never in a busy loop.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Union

import anyio

from ._backend import LoopHandle

__all__ = [
    "Limiter",
    "LimiterArg",
    "Limiters",
    "acquire_all",
    "release_all",
    "try_acquire_all",
    "with_rate",
]

_clock = time.monotonic
_ids = itertools.count()

#: How late an admission may be accounted at its scheduled slot rather than at "now".
#: Event loops wake timers up to ~1 ms late (epoll and libuv count in milliseconds);
#: resetting the schedule to "now" on every late wake-up would lose ~5% of the rate at
#: 50 starts/s. Crediting at most this much keeps the long-run rate exact while any
#: interval of t seconds still sees at most `rate * (t + _CATCH_UP) + burst` starts.
_CATCH_UP = 0.002


def _check_positive_int(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1 or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1 (or None for no bound), got {value}")
    return value


def _check_rate(rate: object) -> float | None:
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(
            f"rate must be a number of starts per second or None, got {type(rate).__name__}"
        )
    if not rate > 0 or math.isinf(rate) or math.isnan(rate):
        raise ValueError(f"rate must be a finite number > 0 starts per second, got {rate}")
    return float(rate)


class _Waiter:
    """One task (or thread) queued on one limiter; `notify` may run on any thread."""

    __slots__ = ("notify",)

    def __init__(self, notify: Callable[[], None]) -> None:
        self.notify = notify


class Limiter:
    """One budget of concurrency and/or rate, shared by everything that names it.

    `concurrency` bounds the tasks holding the limiter at once; `rate` (starts per
    second) with `burst` bounds starts: in any interval of `t` seconds at most
    `rate * t + burst` tasks start (to within the event loops' ~2 ms timer lag; see
    [Limits](../limits.md)). Either may be `None` (no bound). The same `Limiter`
    works from every event loop (asyncio, uvloop, trio) and thread of the process at
    once; waiters are served first come, first served.

    Pass it as `limiter=` to [`run_all`][tasklanes.run_all] and friends, or use it
    directly:

    ```python
    api = Limiter(concurrency=5, rate=10, name="api")
    await run_all([call(fetch, u) for u in urls], limiter=api)

    async with api:          # any event loop
        await fetch(url)
    with api:                # a plain thread (blocks it while waiting)
        requests.get(url)
    ```

    Cancellation: a task cancelled while it waits leaves the queue at once and holds
    nothing; the waiter behind it is woken if it can go now.
    """

    __slots__ = (
        "__weakref__",
        "_held",
        "_id",
        "_interval",
        "_lock",
        "_tat",
        "_tolerance",
        "_waiters",
        "burst",
        "concurrency",
        "name",
        "rate",
    )

    def __init__(
        self,
        concurrency: int | None = None,
        rate: float | None = None,
        burst: int = 1,
        name: str | None = None,
    ) -> None:
        self.concurrency = _check_positive_int("concurrency", concurrency)
        self.rate = _check_rate(rate)
        if isinstance(burst, bool) or not isinstance(burst, int):
            raise TypeError(f"burst must be an int >= 1, got {type(burst).__name__}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1 (starts allowed at once), got {burst}")
        if rate is None and burst != 1:
            raise ValueError("burst only applies with a rate: give rate= too")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {type(name).__name__}")
        self.burst = burst
        self.name = name
        self._id = next(_ids)  # the global acquisition order: no deadlock between limiters
        self._lock = threading.Lock()
        self._held = 0
        self._interval = 1.0 / self.rate if self.rate is not None else 0.0
        self._tolerance = (burst - 1) * self._interval
        self._tat = -math.inf
        self._waiters: deque[_Waiter] = deque()

    # -- state, under self._lock ----------------------------------------------------

    def _delay(self, now: float) -> float | None:
        """0.0: may start now; > 0: the seconds until the next rate slot; None: full."""
        if self.concurrency is not None and self._held >= self.concurrency:
            return None
        if self.rate is not None:
            slot = self._tat - self._tolerance
            if slot > now:
                return slot - now
        return 0.0

    def _take(self, now: float) -> None:
        self._held += 1
        if self.rate is not None:
            self._tat = max(self._tat, now - _CATCH_UP) + self._interval

    def _wake_head(self) -> None:
        if self._waiters:
            self._waiters[0].notify()

    # -- the public surface ---------------------------------------------------------

    @property
    def held(self) -> int:
        """Tasks holding this limiter now."""
        return self._held

    @property
    def waiting(self) -> int:
        """Tasks and threads queued for this limiter now."""
        return len(self._waiters)

    def idle(self) -> bool:
        """Nothing holds it, nothing waits, and its rate bucket is full: dropping it and
        making a new one would change nothing."""
        with self._lock:
            return self._held == 0 and not self._waiters and self._tat <= _clock()

    def try_acquire(self) -> bool:
        """Take the limiter if that is possible without waiting (and nobody waits)."""
        with self._lock:
            if self._waiters:
                return False
            now = _clock()
            if self._delay(now) != 0.0:
                return False
            self._take(now)
            return True

    async def acquire(self) -> None:
        """Wait (on the running event loop) until this limiter admits one more task.

        Cancellation: the waiter leaves the queue at once, holding nothing.
        """
        if self.try_acquire():
            return
        call_soon = LoopHandle().call_soon_threadsafe
        event = anyio.Event()

        def notify() -> None:
            call_soon(event.set)

        waiter = _Waiter(notify)
        with self._lock:
            self._waiters.append(waiter)
        try:
            while True:
                with self._lock:
                    if self._waiters[0] is waiter:
                        now = _clock()
                        delay = self._delay(now)
                        if delay == 0.0:
                            self._waiters.popleft()
                            self._take(now)
                            self._wake_head()
                            return
                    else:
                        delay = None
                    event = anyio.Event()  # notify() reads `event` when it runs
                if delay is None:
                    await event.wait()
                else:
                    with anyio.move_on_after(delay):
                        await event.wait()
        except BaseException:
            self._leave(waiter)
            raise

    def acquire_blocking(self, timeout: float | None = None) -> bool:
        """[`acquire`][tasklanes.Limiter.acquire] for a plain thread: block it until
        admitted, or `timeout` seconds; return whether it was admitted."""
        if self.try_acquire():
            return True
        deadline = None if timeout is None else _clock() + timeout
        event = threading.Event()
        waiter = _Waiter(event.set)
        with self._lock:
            self._waiters.append(waiter)
        try:
            while True:
                with self._lock:
                    event.clear()
                    now = _clock()
                    delay: float | None = None
                    if self._waiters[0] is waiter:
                        delay = self._delay(now)
                        if delay == 0.0:
                            self._waiters.popleft()
                            self._take(now)
                            self._wake_head()
                            return True
                if deadline is not None:
                    if now >= deadline:
                        self._leave(waiter)
                        return False
                    delay = deadline - now if delay is None else min(delay, deadline - now)
                event.wait(delay)
        except BaseException:
            self._leave(waiter)
            raise

    def _leave(self, waiter: _Waiter) -> None:
        with self._lock:
            was_head = bool(self._waiters) and self._waiters[0] is waiter
            try:
                self._waiters.remove(waiter)
            except ValueError:
                return
            if was_head:
                self._wake_head()

    def release(self) -> None:
        """Give back one admission (the task is over); wakes the next waiter."""
        with self._lock:
            if self._held <= 0:
                raise RuntimeError(f"{self!r} released more often than acquired")
            self._held -= 1
            self._wake_head()

    async def __aenter__(self) -> Limiter:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def __enter__(self) -> Limiter:
        self.acquire_blocking()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        parts = [f"name={self.name!r}"] if self.name is not None else []
        if self.concurrency is not None:
            parts.append(f"concurrency={self.concurrency}")
        if self.rate is not None:
            parts.append(f"rate={self.rate:g}")
            if self.burst != 1:
                parts.append(f"burst={self.burst}")
        parts.append(f"held={self._held} waiting={len(self._waiters)}")
        return f"<Limiter {' '.join(parts)}>"


#: What ``limiter=`` takes: one limiter, several, or a function of the task (of the item
#: for ``amap``) returning one, several or None.
LimiterArg = Union[
    Limiter,
    Sequence[Limiter],
    Callable[[Any], Union[Limiter, Sequence[Limiter], None]],
    None,
]


# -- several limiters at once -----------------------------------------------------------


def _ordered(limiters: Iterable[Limiter]) -> list[Limiter]:
    return sorted(set(limiters), key=lambda lim: lim._id)


def try_acquire_all(limiters: Sequence[Limiter]) -> bool:
    """Take every limiter now, or none of them (nobody waits for one)."""
    taken: list[Limiter] = []
    for limiter in limiters:
        if not limiter.try_acquire():
            release_all(taken)
            return False
        taken.append(limiter)
    return True


async def acquire_all(limiters: Sequence[Limiter]) -> None:
    """Wait until every limiter admits the task; all or nothing.

    `limiters` must come from [`ordered_limiters`][]: everybody takes them in one
    global order, so two tasks wanting the same two limiters never deadlock.

    Cancellation: the limiters taken so far are given back before this re-raises.
    """
    taken: list[Limiter] = []
    try:
        for limiter in limiters:
            await limiter.acquire()
            taken.append(limiter)
    except BaseException:
        release_all(taken)
        raise


def release_all(limiters: Sequence[Limiter]) -> None:
    for limiter in limiters:
        limiter.release()


def ordered_limiters(value: Limiter | Sequence[Limiter]) -> tuple[Limiter, ...]:
    """A task's limiters, deduplicated, in the global acquisition order."""
    if isinstance(value, Limiter):
        return (value,)
    return tuple(_ordered(value))


# -- a Limiter per key ----------------------------------------------------------------------


class Limiters:
    """A [`Limiter`][tasklanes.Limiter] per key (host, tenant, account), made on first use.

    `Limiters(concurrency=2, rate=5)[key]` returns the same `Limiter` for the same
    key while that key is in use; the arguments are those of `Limiter`.

    ```python
    per_host = Limiters(concurrency=2, rate=5)
    async for page in amap(fetch, urls,
                           limiter=lambda url: per_host[urlsplit(url).hostname]):
        ...
    ```

    Memory stays bounded by the keys in use, not by every key ever seen: a key whose
    limiter is idle (nothing holds it, nothing waits, its rate bucket is full again)
    is dropped by a sweep that runs as the table grows, and made again, with its budget
    full, if the key comes back. A limiter that anyone still references is never
    replaced (a weak table finds it again).
    """

    def __init__(
        self, concurrency: int | None = None, rate: float | None = None, burst: int = 1
    ) -> None:
        Limiter(concurrency, rate, burst)  # check the arguments now, once
        self._args = (concurrency, rate, burst)
        self._lock = threading.Lock()
        self._strong: dict[Hashable, Limiter] = {}
        self._weak: weakref.WeakValueDictionary[Hashable, Limiter] = (
            weakref.WeakValueDictionary()
        )
        self._sweep_at = 1024

    def __getitem__(self, key: Hashable) -> Limiter:
        with self._lock:
            limiter = self._strong.get(key)
            if limiter is None:
                limiter = self._weak.get(key)
                if limiter is None:
                    concurrency, rate, burst = self._args
                    limiter = Limiter(concurrency, rate, burst, name=str(key))
                    self._weak[key] = limiter
                self._strong[key] = limiter
                if len(self._strong) >= self._sweep_at:
                    self._sweep()
            return limiter

    def _sweep(self) -> None:
        idle = [key for key, limiter in self._strong.items() if limiter.idle()]
        for key in idle:
            del self._strong[key]
        # Sweep again when the table has doubled: the cost stays O(1) per key.
        self._sweep_at = max(1024, 2 * len(self._strong))

    def sweep(self) -> int:
        """Drop the idle keys now (it also happens on its own); return how many remain."""
        with self._lock:
            self._sweep()
            return len(self._strong)

    def __len__(self) -> int:
        """Keys currently kept (in use, or not yet swept)."""
        with self._lock:
            return len(self._strong)

    def __repr__(self) -> str:
        concurrency, rate, burst = self._args
        return f"<Limiters concurrency={concurrency} rate={rate} burst={burst} keys={len(self)}>"


def with_rate(limiter: LimiterArg, extra: Limiter | None) -> LimiterArg:
    """`limiter=` with one more limiter that every task takes (a decorator's `rate=`)."""
    if extra is None:
        return limiter
    if limiter is None:
        return extra
    if isinstance(limiter, Limiter):
        return [limiter, extra]
    if isinstance(limiter, (list, tuple)):
        return [*limiter, extra]
    per_task = resolve_limiter_arg(limiter)
    assert per_task is not None
    return lambda task: [*per_task(task), extra]


def resolve_limiter_arg(limiter: object) -> Callable[[Any], tuple[Limiter, ...]] | None:
    """`limiter=` as the API takes it, checked up front: None, a `Limiter`, a sequence
    of them, or a callable returning one or a sequence. Returns a per-task function."""
    if limiter is None:
        return None
    if isinstance(limiter, Limiter):
        fixed: tuple[Limiter, ...] = (limiter,)
        return lambda _task: fixed
    if isinstance(limiter, (list, tuple)):
        for item in limiter:
            if not isinstance(item, Limiter):
                raise TypeError(
                    f"limiter= takes Limiter objects, got a {type(item).__name__} in the sequence"
                )
        fixed = ordered_limiters(limiter)
        return lambda _task: fixed
    if callable(limiter):
        fn = limiter

        def per_task(task: Any) -> tuple[Limiter, ...]:
            value = fn(task)
            if value is None:
                return ()
            if isinstance(value, Limiter):
                return (value,)
            if isinstance(value, (list, tuple)) and all(isinstance(v, Limiter) for v in value):
                return ordered_limiters(value)
            raise TypeError(
                f"the limiter= callable must return a Limiter, a sequence of them or None, "
                f"got {type(value).__name__}"
            )

        return per_task
    raise TypeError(
        "limiter must be a Limiter, a sequence of Limiters, or a callable returning them "
        f"(e.g. lambda url: per_host[host(url)]), got {type(limiter).__name__}"
    )
