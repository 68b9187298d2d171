"""Outcomes handed from foreign threads to an event loop, one wake-up per batch of them.

Waking a loop from another thread costs tens of microseconds (a syscall on the
loop's self-pipe and a trip through its queue). ``asyncio.to_thread`` pays it for
every call. Here a thread appends to a list and wakes the loop only if the list was
empty; the loop then drains everything that arrived in the meantime at once.

It serves the lanes (outcomes from worker threads and the process pool) and
`_backend.run_in_fresh_thread`; it imports nothing of tasklanes at run time, so
every layer may use it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from ._backend import LoopHandle

__all__ = ["Inbox"]


class Inbox:
    __slots__ = ("_call", "_event", "_items", "_lock", "_pending", "_poked")

    def __init__(self, loop: LoopHandle) -> None:
        self._lock = threading.Lock()
        self._items: list[Any] = []
        self._pending = False
        self._poked = False
        self._event = anyio.Event()
        self._call = loop.call_soon_threadsafe

    def put(self, item: Any) -> None:
        """Any thread: deliver ``item``; wake the loop if it is not already woken."""
        with self._lock:
            self._items.append(item)
            if self._pending:
                return
            self._pending = True
        self._call(self._wake)

    def put_many(self, items: list[Any]) -> None:
        with self._lock:
            self._items.extend(items)
            if self._pending:
                return
            self._pending = True
        self._call(self._wake)

    def poke(self) -> None:
        """Loop thread: make ``get()`` return (maybe with nothing), so its caller looks
        at its source again (a limiter admitted a task, a retry is due)."""
        self._poked = True
        self._event.set()

    def poke_threadsafe(self) -> None:
        """Any thread: `poke` on the loop."""
        self._call(self.poke)

    def _wake(self) -> None:
        self._event.set()

    def take(self) -> list[Any]:
        """Loop thread: everything delivered so far, without waiting."""
        with self._lock:
            items = self._items
            self._items = []
            self._pending = False
        return items

    async def get(self) -> list[Any]:
        """Loop thread: wait until something was delivered (or ``poke``), then take it all."""
        while True:
            items = self.take()
            if items or self._poked:
                self._poked = False
                return items
            await self._event.wait()
            self._event = anyio.Event()
