"""Progress reporting: a live bar on stderr, or structured updates to a callable."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

__all__ = ["Progress", "ProgressArg", "ProgressUpdate", "make_progress"]


@dataclass(frozen=True)
class ProgressUpdate:
    """One progress report: ``done`` of ``total`` tasks (``None`` while the input is
    lazy and unfinished), how many ``failed``, seconds ``elapsed``, tasks per second
    (``rate``), the estimated seconds left (``eta``, when known) and ``finished``."""

    done: int
    total: int | None
    failed: int
    elapsed: float
    rate: float
    eta: float | None
    finished: bool


ProgressArg = Union[bool, Callable[[ProgressUpdate], Any], None]


class Progress:
    """Counts outcomes and reports at most ~10 times a second (and once at the end)."""

    def __init__(self, sink: Callable[[ProgressUpdate], Any], interval: float = 0.1) -> None:
        self._sink = sink
        self._interval = interval
        self._total: int | None = None
        self._done = 0
        self._failed = 0
        self._start = 0.0
        self._next = 0.0
        self._closed = False

    def start(self, total: int | None) -> None:
        self._total = total
        self._start = time.monotonic()
        self._next = self._start
        self._report(False)

    def advance(self, ok: bool) -> None:
        self._done += 1
        if not ok:
            self._failed += 1
        if time.monotonic() >= self._next:
            self._report(False)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._report(True)

    def _report(self, finished: bool) -> None:
        now = time.monotonic()
        self._next = now + self._interval
        elapsed = now - self._start
        rate = self._done / elapsed if elapsed > 0 else 0.0
        eta = None
        if self._total is not None and rate > 0:
            eta = max(self._total - self._done, 0) / rate
        self._sink(
            ProgressUpdate(self._done, self._total, self._failed, elapsed, rate, eta, finished)
        )


class _Bar:
    """A tqdm bar fed by progress updates (tqdm.auto: a widget in Jupyter)."""

    def __init__(self) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError(
                "progress=True draws its bar with tqdm, which is not installed: "
                "pip install 'tasklanes[progress]' (or pass a callable to progress=)"
            ) from None
        self._tqdm = tqdm
        self._bar: Any = None
        self._shown = 0

    def __call__(self, update: ProgressUpdate) -> None:
        if self._bar is None:
            self._bar = self._tqdm(total=update.total, unit="task", dynamic_ncols=True, leave=True)
        bar = self._bar
        if update.total is not None and bar.total != update.total:
            bar.total = update.total
        bar.update(update.done - self._shown)
        self._shown = update.done
        bar.set_postfix(failed=update.failed, refresh=False)
        if update.finished:
            bar.close()


def make_progress(arg: ProgressArg) -> Progress | None:
    if arg is None or arg is False:
        return None
    if arg is True:
        return Progress(_Bar())
    if callable(arg):
        return Progress(arg)
    raise TypeError(f"progress must be True, False or a callable, got {type(arg).__name__}")
