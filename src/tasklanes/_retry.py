"""[`Retry`][tasklanes.Retry]: which failures run a task again, how often, how long apart."""

from __future__ import annotations

import inspect
import math
import random
from typing import Any

from ._errors import WorkerCrashed

__all__ = ["Retry", "check_retry", "check_retryable_task", "note_attempts"]

DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError, WorkerCrashed)


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value}")
    return float(value)


class Retry:
    """Run a failed task again, up to `attempts` attempts in all.

    An attempt that fails with an instance of `on` runs again after
    `min(max_backoff, backoff * multiplier ** (k - 1))` seconds, `k` being the failures
    so far; with `jitter` ("full jitter") the wait is a uniform random part of that,
    so many tasks failing together do not come back together. Any other error, or the
    last attempt's, is the task's outcome, with a note such as `after 3 attempts`.

    `timeout=` of the call applies to each attempt, and each attempt takes its
    limiters again (none are held during the backoff). `retry=3` on a call means
    `Retry(attempts=3)`.

    ```python
    await run_all(tasks, retry=Retry(attempts=5, on=(ConnectionError,), backoff=0.2))
    await run_all(tasks, kind="blocking", retry=3, timeout=10)
    ```

    Cancellation: a task waiting out its backoff stops at once with its batch.
    """

    __slots__ = ("attempts", "backoff", "jitter", "max_backoff", "multiplier", "on")

    def __init__(
        self,
        attempts: int = 3,
        on: type[BaseException] | tuple[type[BaseException], ...] = DEFAULT_RETRY_ON,
        backoff: float = 0.1,
        max_backoff: float = 10.0,
        multiplier: float = 2.0,
        jitter: bool = True,
    ) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise TypeError(f"attempts must be an int >= 1, got {type(attempts).__name__}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1 (1 means no retry), got {attempts}")
        if isinstance(on, type):
            on = (on,)
        if not isinstance(on, tuple) or not on:
            raise TypeError(
                "on must be an exception class or a non-empty tuple of them, "
                f"got {type(on).__name__}"
            )
        for cls in on:
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise TypeError(f"on must hold exception classes, got {cls!r}")
            if not issubclass(cls, Exception):
                raise ValueError(
                    f"on={cls.__name__} would retry cancellation or exits; "
                    "give subclasses of Exception"
                )
        self.attempts = attempts
        self.on: tuple[type[BaseException], ...] = on
        self.backoff = _check_seconds("backoff", backoff)
        self.max_backoff = _check_seconds("max_backoff", max_backoff)
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)):
            raise TypeError(f"multiplier must be a number >= 1, got {type(multiplier).__name__}")
        if not multiplier >= 1 or math.isinf(multiplier):
            raise ValueError(f"multiplier must be a finite number >= 1, got {multiplier}")
        self.multiplier = float(multiplier)
        self.jitter = bool(jitter)

    def delay(self, failures: int) -> float:
        """The wait before the next attempt, after `failures` failed attempts (>= 1)."""
        exponent = min(failures - 1, 1000)  # 2.0 ** 1000 is finite; beyond it overflows
        try:
            ceiling = min(self.max_backoff, self.backoff * self.multiplier**exponent)
        except OverflowError:
            ceiling = self.max_backoff
        return random.uniform(0.0, ceiling) if self.jitter else ceiling

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt number `attempt` (1-based), which raised `exc`, runs again."""
        return attempt < self.attempts and isinstance(exc, self.on)

    def __repr__(self) -> str:
        names = ", ".join(cls.__name__ for cls in self.on)
        return (
            f"Retry(attempts={self.attempts}, on=({names}{',' if len(self.on) == 1 else ''}), "
            f"backoff={self.backoff:g}, max_backoff={self.max_backoff:g}, "
            f"multiplier={self.multiplier:g}, jitter={self.jitter})"
        )


def check_retry(retry: object) -> Retry | None:
    """`retry=` as the API takes it: None, an int (attempts) or a `Retry`."""
    if retry is None:
        return None
    if isinstance(retry, Retry):
        return retry
    if isinstance(retry, int) and not isinstance(retry, bool):
        if retry < 1:
            raise ValueError(f"retry must be a number of attempts >= 1, got {retry}")
        return Retry(attempts=retry)
    raise TypeError(
        f"retry must be None, a number of attempts or a Retry(...), got {type(retry).__name__}"
    )


def check_retryable_task(task: object, index: int) -> None:
    """A task that cannot run twice (a coroutine object, an awaitable) with retry=."""
    if inspect.isawaitable(task):
        from ._tasks import describe

        raise TypeError(
            f"task {index} ({describe(task)}) is a coroutine or awaitable, which can run only "
            "once, so retry= cannot run it again: give a callable instead, e.g. "
            "call(fetch, url) rather than fetch(url)"
        )


def note_attempts(exc: BaseException, attempts: int) -> Any:
    """Add "after N attempts" to the final error of a retried task (once)."""
    note = f"(tasklanes: failed after {attempts} attempts)"
    if note not in getattr(exc, "__notes__", ()):
        exc.add_note(note)
    return exc
