"""Progress reporting: a live bar on stderr, or structured updates to a callable.

``progress=True`` draws a bar with [tqdm](https://tqdm.github.io/) (the ``progress``
extra: ``pip install 'tasklanes[progress]'``). ``tqdm.auto`` picks a text bar in a
terminal and a widget in Jupyter. ``progress=callable`` needs nothing extra: the
callable receives `ProgressUpdate` objects and may draw, log or export them.

Why tqdm rather than rich: tqdm is one small pure-Python package with no
dependencies, draws on a plain stream (``stderr``: it never fights the program's own
output on ``stdout``), degrades to ``\\r``-updated lines in CI logs, and has a Jupyter
widget built in. rich draws finer bars but is a larger dependency that takes over
the terminal (a live display), which is more than a batch runner should impose.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

__all__ = ["Progress", "ProgressArg", "ProgressUpdate", "make_progress"]


@dataclass(frozen=True)
class ProgressUpdate:
    """One progress report, as received by ``progress=callable``.

    * ``done``: tasks finished so far (succeeded or failed);
    * ``total``: how many tasks the batch has, or ``None`` when the input has no
      ``len()`` (a generator, an async iterable);
    * ``failed``: how many of ``done`` failed (timeouts and crashes included);
    * ``elapsed``: seconds since the batch started;
    * ``rate``: finished tasks per second so far;
    * ``eta``: estimated seconds left, or ``None`` when ``total`` is unknown or
      nothing has finished yet;
    * ``finished``: ``True`` on the last update of the batch, sent exactly once
      however the batch ends (completed, failed fast or cancelled).

    Updates arrive on the caller's event loop thread: one when the batch starts,
    then at most about ten a second as tasks finish, then the final one.
    """

    done: int
    total: int | None
    failed: int
    elapsed: float
    rate: float
    eta: float | None
    finished: bool


ProgressArg = Union[bool, Callable[[ProgressUpdate], Any], None]


class Progress:
    """Counts outcomes and reports at most once per ``interval`` (and once at the end).

    An exception raised by the sink (the user's callable, or the bar) must not break
    the lane that is running the batch: it is kept, reporting stops, and ``close()``
    raises it once the batch's work has stopped.
    """

    def __init__(self, sink: Callable[[ProgressUpdate], Any], interval: float = 0.1) -> None:
        self._sink = sink
        self._interval = interval
        self._total: int | None = None
        self._done = 0
        self._failed = 0
        self._start = 0.0
        self._next = 0.0
        self._closed = False
        self._error: BaseException | None = None

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
        if self._closed:
            return
        self._closed = True
        self._report(True)
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _report(self, finished: bool) -> None:
        if self._error is not None:
            return
        now = time.monotonic()
        self._next = now + self._interval
        elapsed = now - self._start
        rate = self._done / elapsed if elapsed > 0 else 0.0
        eta = None
        if self._total is not None and rate > 0:
            eta = max(self._total - self._done, 0) / rate
        update = ProgressUpdate(
            self._done, self._total, self._failed, elapsed, rate, eta, finished
        )
        try:
            self._sink(update)
        except Exception as exc:  # the user's code: surface it, but after the batch
            self._error = exc


_SPINNER = "|/-\\"
#: Without a total tqdm has no bar to draw: a spinner, the count, the rate and the postfix.
_UNKNOWN_TOTAL = "{desc}{n_fmt} {unit}s [{elapsed}, {rate_fmt}{postfix}]"


class _Bar:
    """A tqdm bar fed by progress updates (``tqdm.auto``: a widget in Jupyter).

    With a known total: ``42%|████▏     | 42/100 [00:01<00:01, 40.1task/s, failed=1]``.
    Without one, a spinner and the count: ``/ 42 tasks [00:01, 40.1task/s, failed=1]``.
    """

    def __init__(self) -> None:
        try:
            tqdm: Any = importlib.import_module("tqdm.auto").tqdm
        except ImportError:
            raise ImportError(
                "progress=True draws its bar with tqdm, which is not installed: "
                "pip install 'tasklanes[progress]' (or pass a callable to progress=)"
            ) from None
        # Updates come from tasklanes, already throttled: tqdm's monitor thread (which
        # forces refreshes of stalled bars) is not needed, and would outlive the batch.
        self._tqdm: Any = type("TasklanesTqdm", (tqdm,), {"monitor_interval": 0})
        self._bar: Any = None
        self._shown = 0
        self._spin = 0

    def __call__(self, update: ProgressUpdate) -> None:
        bar = self._bar
        fresh = bar is None
        if bar is None:
            bar = self._bar = self._tqdm(
                total=update.total,
                unit="task",
                dynamic_ncols=True,
                leave=True,
                mininterval=0,  # tasklanes throttles; draw every update it sends
                postfix={"failed": update.failed},
                desc=_SPINNER[0] + " " if update.total is None else None,
                bar_format=_UNKNOWN_TOTAL if update.total is None else None,
            )
        if update.total is not None and bar.total != update.total:
            bar.total = update.total
        if update.total is None:
            self._spin = (self._spin + 1) % len(_SPINNER)
            bar.set_description_str(_SPINNER[self._spin] + " ", refresh=False)
        bar.set_postfix(failed=update.failed, refresh=False)
        if update.done != self._shown:
            bar.update(update.done - self._shown)
            self._shown = update.done
        elif not fresh:
            bar.refresh()  # the elapsed time and the spinner move on
        if update.finished:
            if update.total is None:
                bar.set_description_str("", refresh=False)
            bar.close()


def make_progress(arg: ProgressArg) -> Progress | None:
    """``progress=`` as given to the batch API: ``False``/``None`` (no reporting),
    ``True`` (a tqdm bar on stderr) or a callable receiving `ProgressUpdate`."""
    if arg is None or arg is False:
        return None
    if arg is True:
        return Progress(_Bar())
    if callable(arg):
        return Progress(arg)
    raise TypeError(
        "progress must be True (a bar on stderr), False, or a callable receiving "
        f"ProgressUpdate objects, got {type(arg).__name__}"
    )
