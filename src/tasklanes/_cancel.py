"""``check_cancelled``: the only way to stop a thread early is to ask it."""

from __future__ import annotations

import threading

from ._errors import TaskCancelled, TaskTimeout

__all__ = ["check_cancelled", "set_current_ticket"]


class Ticket:
    """What a worker thread knows about the task it runs: whether to give up, and why."""

    __slots__ = ("cancelled", "index", "timed_out", "timeout")

    def __init__(self, index: int, timeout: float | None) -> None:
        self.index = index
        self.timeout = timeout
        self.cancelled = False
        self.timed_out = False


_local = threading.local()


def set_current_ticket(ticket: Ticket | None) -> None:
    _local.ticket = ticket


def check_cancelled() -> None:
    """Raise if the blocking task running in this thread should stop.

    A thread cannot be killed, so a long blocking task that wants to honour timeouts
    and cancellation calls this now and then:

    ```python
    def crunch(rows):
        for row in rows:
            check_cancelled()
            handle(row)
    ```

    It raises [TaskTimeout][tasklanes.TaskTimeout] when the task overran its ``timeout`` and
    [TaskCancelled][tasklanes.TaskCancelled] when its batch was cancelled or failed; either way
    tasklanes has already given up on the result and discards what the task returns.
    Outside a blocking task (io tasks, cpu tasks, plain threads) it does nothing: io
    tasks are cancelled at their next ``await`` and cpu tasks are killed.
    """
    ticket: Ticket | None = getattr(_local, "ticket", None)
    if ticket is not None and ticket.cancelled:
        if ticket.timed_out:
            raise TaskTimeout(ticket.index, ticket.timeout)
        raise TaskCancelled(f"task {ticket.index} was cancelled: its batch no longer wants it")
