"""Batches run on one lane on behalf of another batch (`kind="auto"`).

An auto batch pulls a few tasks itself (to tell async from sync, and to measure
them), then hands the rest of its input to the lane it chose. The chosen lane runs a
[`SubBatch`][] whose source is a view of the auto batch's input ([`Resumed`][]: the
tasks auto pulled and did not run, then the rest), so every task keeps its index in
the batch; a probe runs as a sub-batch of one ([`One`][]). A sub-batch's outcomes go
to the auto batch's consumer, and it stops when the auto batch does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import anyio

from ._batch import Batch
from ._tasks import END, Source, close_if_coroutine

if TYPE_CHECKING:
    from ._batch import Lane

__all__ = ["One", "Resumed", "SubBatch", "run_sub"]


# -- the sources a sub-batch pulls from --------------------------------------------------


class Resumed:
    """The batch's input as a lane sees it once auto has chosen: the tasks auto pulled
    and has not run yet (`back`) first, then the rest of the input, each task checked
    by the chosen lane. Indexes stay those of the batch: `back` holds the tasks just
    before the input's next one."""

    trusted: frozenset[type] = frozenset()
    in_memory = False
    size = None

    def __init__(
        self, source: Source, back: list[tuple[int, Any]], check: Callable[[object, int], None]
    ) -> None:
        self._source = source
        self._back = deque(back)
        self._check = check
        self._trusted: frozenset[type] = getattr(check, "trusted", frozenset())

    @property
    def pulled(self) -> int:
        return self._source.pulled - len(self._back)

    @property
    def exhausted(self) -> bool:
        return not self._back and self._source.exhausted

    def blocked(self) -> bool:
        return not self._back and self._source.blocked()

    def take(self, n: int) -> list[Any]:
        out: list[Any] = []
        back = self._back
        check = self._check
        while back and len(out) < n:
            index, task = back[0]
            check(task, index)
            back.popleft()
            out.append(task)
        if len(out) < n and not back:
            start = self._source.pulled
            got = self._source.take(n - len(out))
            if set(map(type, got)) <= self._trusted:  # the io lane's coroutines
                out.extend(got)
                return out
            try:
                for index, task in enumerate(got, start):
                    check(task, index)
            except BaseException:
                for task in got:
                    close_if_coroutine(task)
                raise
            out.extend(got)
        return out

    async def next(self) -> Any:
        if self._back:
            index, task = self._back[0]
            self._check(task, index)
            return self._back.popleft()
        item = await self._source.next()
        if item is not END:
            try:
                self._check(item[1], item[0])
            except BaseException:
                close_if_coroutine(item[1])
                raise
        return item

    def take_rest(self) -> None:
        return None  # pulled as a lazy input: the cpu lane paces it

    def release(self) -> None:
        self._source.release()

    def close(self) -> None:
        for _, task in self._back:
            close_if_coroutine(task)
        self._back.clear()


class One:
    """A source of one task with its index in the batch (a probe's)."""

    trusted: frozenset[type] = frozenset()
    in_memory = False
    size = 1

    def __init__(self, index: int, task: object) -> None:
        self._index = index
        self._task = task
        self._taken = False

    @property
    def pulled(self) -> int:
        return self._index + self._taken

    @property
    def exhausted(self) -> bool:
        return self._taken

    def blocked(self) -> bool:
        return False

    def take(self, n: int) -> list[Any]:
        if self._taken or n <= 0:
            return []
        self._taken = True
        return [self._task]

    async def next(self) -> Any:
        if self._taken:
            return END
        self._taken = True
        return (self._index, self._task)

    def take_rest(self) -> None:
        return None

    def release(self) -> None:
        pass

    def close(self) -> None:
        self._taken = True


class SubBatch(Batch):
    """A batch run on one lane for an auto batch: its outcomes go to the auto batch,
    and it stops when the auto batch does."""

    __slots__ = ("_outer", "_own_stop")

    def __init__(
        self,
        outer: Batch,
        source: object,
        limit: int,
        emit: Callable[[int, bool, Any], None] | None = None,
    ) -> None:
        self._outer = outer
        self._own_stop = False
        if emit is None:
            super().__init__(
                cast(Source, source), limit, outer.timeout, outer.emit, outer.loop,
                None, outer.emit_ok_many, outer.emit_ok,
            )  # fmt: skip
        else:
            super().__init__(cast(Source, source), limit, outer.timeout, emit, outer.loop)

    @property
    def wake(self) -> Callable[[], None] | None:
        return self._outer.wake

    @wake.setter
    def wake(self, poke: Callable[[], None] | None) -> None:
        # The lane that pulls from the auto batch's input is the one the controls
        # (limiter=, retry=) must wake when a task becomes ready; a probe's lane pulls
        # nothing more, and Batch.__init__'s None must not undo a lane's setting.
        if poke is not None:
            self._outer.wake = poke

    @property
    def stopping(self) -> bool:
        return self._own_stop or self._outer.stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self._own_stop = value


async def run_sub(lane: Lane, sub: SubBatch, outer: Batch) -> None:
    """`run_batch` for a sub-batch: its own scope, its failure passed to `outer`."""
    with anyio.CancelScope() as scope:
        sub.scope = scope
        if sub.stopping:
            scope.cancel()
        await lane.run(sub)
    if sub.error is not None:
        outer.fail(sub.error)
