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

One file on purpose, past 500 lines: `Limiter`'s wait protocol (grant hand-off,
cancellation) and the helpers that take several limiters in one global order are one
piece of locking logic, and `Limiters` and the `limiter=` argument checks are thin
layers over it.
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

#: How much of an event loop's late wake-up a rate slot may make up for, as a part of
#: the interval between starts (and at most `_CATCH_UP_MAX` seconds). Loops wake timers
#: ~1 ms late (epoll and libuv count milliseconds), more on a busy machine; accounting
#: each start at "now" would lose that much per start (~5% at 50 starts/s). Crediting
#: up to a quarter interval keeps the long-run rate exact, while no two starts of a
#: burst-1 limiter are ever closer than three quarters of the interval.
_CATCH_UP_PART = 0.25
_CATCH_UP_MAX = 0.01


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
    """One task (or thread) queued on one limiter.

    `granted` is set, under the limiter's lock, by whoever admits it (a release, the
    head of the queue whose rate slot came); `wake` may run on any thread.
    """

    __slots__ = ("granted", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.granted = False
        self.wake = wake


class Limiter:
    """One budget of concurrency and/or rate, shared by everything that names it.

    `concurrency` bounds the tasks holding the limiter at once; `rate` (starts per
    second) with `burst` bounds starts: in any interval of `t` seconds at most
    `rate * t + burst` tasks start (give or take a quarter interval that makes up for
    event loops waking late; see [Limits](limits.md)). Either may be `None` (no
    bound). The same `Limiter` works from every event loop (asyncio, uvloop, trio)
    and thread of the process at
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
        "_catch_up",
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
        self._catch_up = min(_CATCH_UP_PART * self._interval, _CATCH_UP_MAX)
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
            self._tat = max(self._tat, now - self._catch_up) + self._interval

    def _grant(self, now: float) -> None:
        """Admit queued waiters, first come first served, while the budget allows.

        Admitting here, rather than waking each waiter to try for itself, lets one
        late timer admit a whole burst at once and costs a waiter one wake-up. The
        head left waiting for a rate slot is woken too, so that it times its slot.
        """
        waiters = self._waiters
        while waiters:
            delay = self._delay(now)
            if delay != 0.0:
                if delay is not None:
                    waiters[0].wake()
                return
            waiter = waiters.popleft()
            self._take(now)
            waiter.granted = True
            waiter.wake()

    def _head_delay(self, waiter: _Waiter) -> float | None:
        """For a waiter not granted yet: seconds until its rate slot if it is the head
        (it times it), else None (someone will wake it)."""
        if self._waiters and self._waiters[0] is waiter:
            return self._delay(_clock())
        return None

    def _cancel(self, waiter: _Waiter) -> None:
        """A waiter gives up (cancelled, timed out): it leaves the queue holding nothing."""
        with self._lock:
            if waiter.granted:
                # Admitted as it was cancelled: give the slot back. (A rate slot stays
                # spent: starting later than planned is always allowed.)
                self._held -= 1
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:  # pragma: no cover - granted and removed by others
                    pass
            self._grant(_clock())

    # -- the public surface ---------------------------------------------------------

    @property
    def held(self) -> int:
        """Tasks holding this limiter now."""
        return self._held

    @property
    def waiting(self) -> int:
        """Waiters queued for this limiter now: threads and tasks that wait for it
        themselves, and one per call whose tasks wait for it (a call admits its tasks
        in input order, one after another; how many wait is its lane's `limited`
        figure in `stats()`)."""
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
            if self.concurrency is not None and self._held >= self.concurrency:
                return False
            if self.rate is not None:
                now = _clock()
                if self._tat - self._tolerance > now:
                    return False
                self._tat = max(self._tat, now - self._catch_up) + self._interval
            self._held += 1
            return True

    async def acquire(self) -> None:
        """Wait (on the running event loop) until this limiter admits one more task.

        Cancellation: the waiter leaves the queue at once, holding nothing.
        """
        if self.try_acquire():
            return
        loop_thread = threading.get_ident()
        call_soon = LoopHandle().call_soon_threadsafe
        event = anyio.Event()

        def wake() -> None:
            # Called under the lock; `event` is the one this task waits on now.
            if threading.get_ident() == loop_thread:
                event.set()  # released on this loop: no trip through its self-pipe
            else:
                call_soon(event.set)

        waiter = _Waiter(wake)
        with self._lock:
            self._waiters.append(waiter)
            self._grant(_clock())  # the queue may have emptied since try_acquire
        try:
            while True:
                with self._lock:
                    if waiter.granted:
                        return
                    delay = self._head_delay(waiter)
                    if delay == 0.0:
                        self._grant(_clock())
                        continue
                    event = anyio.Event()
                if delay is None:
                    await event.wait()
                else:
                    with anyio.move_on_after(delay):
                        await event.wait()
                    with self._lock:
                        self._grant(_clock())  # our slot came: admit us (and a burst)
        except BaseException:
            self._cancel(waiter)
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
            self._grant(_clock())
        try:
            while True:
                with self._lock:
                    if waiter.granted:
                        return True
                    event.clear()
                    delay = self._head_delay(waiter)
                    if delay == 0.0:
                        self._grant(_clock())
                        continue
                if deadline is not None:
                    left = deadline - _clock()
                    if left <= 0:
                        self._cancel(waiter)  # gives back a grant that raced the deadline
                        return False
                    delay = left if delay is None else min(delay, left)
                event.wait(delay)
                if delay is not None:
                    with self._lock:
                        self._grant(_clock())
        except BaseException:
            self._cancel(waiter)
            raise

    def release(self) -> None:
        """Give back one admission (the task is over); admits the next waiter."""
        with self._lock:
            if self._held <= 0:
                raise RuntimeError(f"{self!r} released more often than acquired")
            self._held -= 1
            if self._waiters:
                self._grant(_clock())

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
