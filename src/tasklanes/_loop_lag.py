"""How late the event loop wakes a sleeper: the io lane's view of an overloaded loop.

While an io batch runs, one small task per event loop sleeps `PERIOD` seconds again
and again and records how much later than asked it woke. A loop held by a task that
does not yield (a blocking call in an `async def`), or simply too busy, shows as lag.
The samples go into a histogram merged into the lane's figures (`loop_lag`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ._stats import LaneStats, record

__all__ = ["PERIOD", "sample_loop_lag"]

PERIOD = 0.1
_MERGE_EVERY = 10  # samples: about once a second


async def sample_loop_lag(
    stats: LaneStats, clock: Callable[[], float], sleep: Callable[[float], Awaitable[object]]
) -> None:
    """Sample the loop's lag until cancelled (the batch that started it ends), sleeping
    with ``sleep`` (the loop's own, `LoopHandle.sleep`: anyio's would load its asyncio
    backend).

    Cancellation: this is how it stops; the samples so far are merged on the way out.
    """
    hist: dict[int, int] = {}
    count = 0
    total = 0.0
    top = 0.0
    try:
        while True:
            asked = clock() + PERIOD
            await sleep(PERIOD)
            lag = max(clock() - asked, 0.0)
            record(hist, lag)
            count += 1
            total += lag
            if lag > top:
                top = lag
            if count >= _MERGE_EVERY:
                stats.merge_lag(count, total, top, hist)
                hist = {}
                count = 0
                total = top = 0.0
    finally:
        if count:
            stats.merge_lag(count, total, top, hist)
