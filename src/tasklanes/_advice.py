"""Kind advice: noticing work that runs on the wrong lane, and saying which lane fits.

Two measurements, both cheap enough to stay on:

* **io tasks that hold the event loop.** While an io batch runs, a watchdog thread
  posts a heartbeat callback to the loop every `threshold / 2` seconds. A heartbeat
  still pending after `threshold` means one callback has held the loop that long: the
  watchdog samples the loop thread's stack (`sys._current_frames()`), finds the frame
  the lane's runner called (the task's own coroutine), checks on the next tick that
  it is still there, and reads the loop thread's CPU time between the two ticks.
  Mostly computing: `kind="cpu"`; mostly waiting in a sync call: `kind="blocking"`.
  While the loop answers, a tick only posts the heartbeat (no reads).
* **blocking tasks that compute.** The blocking runner reads its thread's CPU time
  (`time.thread_time()`) around a task; at least 80% of at least 50 ms computing
  suggests `kind="cpu"`. Time waiting for the GIL counts as waiting, so threads that
  compute at the same time may each stay under 80%.

Each function is advised once per [Advisor][tasklanes._advice.Advisor] (one per
`Scheduler`), as a [KindWarning][tasklanes.KindWarning] pointing at the function and
a record on `logging.getLogger("tasklanes.advice")`.

One file past 500 lines on purpose: both measurements feed the same `Advisor` (the
once-per-function bookkeeping and the message), and the lanes import one module.
"""

from __future__ import annotations

import linecache
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from enum import Enum
from types import CodeType, FrameType
from typing import Literal

# The default threshold and the check of the Scheduler's options live with the other
# defaults: a Scheduler checks them without importing this module.
from ._defaults import ADVICE_THRESHOLD as DEFAULT_THRESHOLD
from ._defaults import check_advice_options

__all__ = [
    "BLOCKING_CPU_SHARE",
    "BLOCKING_MIN_SECONDS",
    "DEFAULT_THRESHOLD",
    "LOOP_CPU_SHARE",
    "Advice",
    "Advisor",
    "KindWarning",
    "LoopWatch",
    "ThreadMeter",
    "check_advice_options",
    "thread_cpu_time",
    "thread_times",
]

logger = logging.getLogger("tasklanes.advice")

#: A blocking task is advised to move to the cpu lane when its thread computed at
#: least this share of its run time...
BLOCKING_CPU_SHARE = 0.8
#: ...and it ran at least this long (shorter tasks gain nothing from a process).
BLOCKING_MIN_SECONDS = 0.05
#: A loop held while its thread computed at least this share of the time was computing.
LOOP_CPU_SHARE = 0.5
#: How long the watchdog thread stays up with no loop to watch.
_IDLE_SECONDS = 1.0


class KindWarning(UserWarning):
    """Work seems to run on the wrong lane; the message says which `kind=` fits.

    Issued once per function and [Scheduler][tasklanes.Scheduler], from the thread
    that noticed (a worker thread, or the io lane's watchdog thread), and logged on
    `logging.getLogger("tasklanes.advice")` with `extra=` fields `lane`, `suggest`,
    `function`, `seconds` and `cpu_share`. Turn it off with `Scheduler(advice=False)`
    or the `warnings` filters:

    ```python
    import warnings
    from tasklanes import KindWarning

    warnings.simplefilter("ignore", KindWarning)
    ```

    A filter that turns it into an error does not stop the work: the warning is
    raised on another thread than the caller's, so tasklanes drops it there (the log
    record remains).
    """


# -- thread CPU time ---------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu_time(native_id: int, ident: int | None = None) -> float | None:
    """CPU time (user + system seconds) of another thread of this process, or None.

    `time.thread_time()` reads only the calling thread. On Linux this reads
    `/proc/self/task/<native_id>/stat` (10 ms resolution, and harmless if the thread
    is gone); elsewhere the thread's CPU clock, which needs it alive.
    """
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rfind(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, ValueError, IndexError):
        pass
    if ident is not None and hasattr(time, "pthread_getcpuclockid"):
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(ident))
        except OSError:
            return None
    return None


def thread_times(native_id: int, ident: int | None = None) -> tuple[float, float] | None:
    """`(seconds on a CPU, seconds runnable but waiting for one)` of a thread, or None.

    The second figure (Linux's `/proc/self/task/<id>/schedstat`) keeps a loaded machine
    from passing for a thread that waits: a computing thread that got half a core was
    still computing. Where it cannot be read it is 0.0.
    """
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", "rb") as f:
            on_cpu, runnable = f.read().split()[:2]
        return int(on_cpu) / 1e9, int(runnable) / 1e9
    except (OSError, ValueError):
        pass
    cpu = thread_cpu_time(native_id, ident)
    return None if cpu is None else (cpu, 0.0)


# -- the advice itself -------------------------------------------------------------------


class Advice:
    """One piece of advice: which function, where, what was seen, which kind fits.

    A plain class, not a dataclass: `_advice` is imported with the io lane, and
    ``dataclasses`` (its import and the class it builds) would cost a one-shot
    script a millisecond or two for a record made only when advice is given.
    """

    __slots__ = (
        "cpu_share",
        "filename",
        "function",
        "lane",
        "lineno",
        "module",
        "seconds",
        "seen",
        "suggest",
    )

    def __init__(
        self,
        lane: Literal["io", "blocking"],
        suggest: Literal["blocking", "cpu"],
        function: str,  # qualified name
        filename: str | None,
        lineno: int | None,
        module: str | None,
        seconds: float,  # how long the loop was held / the task ran
        cpu_share: float,  # CPU time over wall time during those seconds
        seen: str | None = None,  # "file:line: source" where the loop was seen held
    ) -> None:
        self.lane = lane
        self.suggest = suggest
        self.function = function
        self.filename = filename
        self.lineno = lineno
        self.module = module
        self.seconds = seconds
        self.cpu_share = cpu_share
        self.seen = seen

    @property
    def where(self) -> str:
        if self.filename is None:
            return "unknown location"
        return f"{self.filename}:{self.lineno}"

    @property
    def message(self) -> str:
        percent = f"{self.cpu_share:.0%}"
        if self.lane == "io":
            head = (
                f"io task {self.function} ({self.where}) held the event loop for "
                f"{self.seconds:.2f} s without yielding"
                + (f", at {self.seen}" if self.seen else "")
                + "."
            )
            if self.suggest == "cpu":
                why = f"It was computing (CPU {percent} of that time)"
            else:
                why = f"It was waiting in a sync call (CPU {percent} of that time)"
            return (
                f'{head} {why}: run it with kind="{self.suggest}" so that the other '
                "tasks on the loop keep running."
            )
        return (
            f"blocking task {self.function} ({self.where}) computed for {percent} of its "
            f"{self.seconds:.2f} s run: threads share one GIL, so computing tasks do "
            f'not run in parallel on them. Run it with kind="cpu" (processes).'
        )


def _key_of(obj: object) -> object:
    code = getattr(obj, "__code__", None)
    return code if code is not None else getattr(obj, "__qualname__", repr(obj))


def _describe(obj: object) -> tuple[str, str | None, int | None, str | None]:
    """`(qualified name, file, first line, module)` of a function or other callable."""
    code = getattr(obj, "__code__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name is None:
        name = type(obj).__qualname__
    module = getattr(obj, "__module__", None)
    if isinstance(code, CodeType):
        return name, code.co_filename, code.co_firstlineno, module
    return name, None, None, module


def _seen_at(frame: FrameType) -> str:
    code = frame.f_code
    line = linecache.getline(code.co_filename, frame.f_lineno).strip()
    where = f"{code.co_filename}:{frame.f_lineno}"
    return f"{where}: `{line}`" if line else where


class Advisor:
    """Advice for one [Scheduler][tasklanes.Scheduler]: each function at most once.

    `after_blocking()` is called by the blocking lane after each task;
    `watch_loop()` by the io lane when a batch starts on a loop.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.threshold = threshold
        self._advised: set[object] = set()
        self._lock = threading.Lock()
        self._watchdog: _Watchdog | None = None

    # -- emitting

    def emit(self, key: object, advice: Advice) -> bool:
        """Warn and log `advice` unless `key` (the function) was advised already."""
        with self._lock:
            if key in self._advised:
                return False
            self._advised.add(key)
        message = advice.message
        logger.warning(
            message,
            extra={
                "lane": advice.lane,
                "suggest": advice.suggest,
                "function": advice.function,
                "seconds": advice.seconds,
                "cpu_share": advice.cpu_share,
            },
        )
        # Pointed at the function, so that the warning shows the user's file and line.
        try:
            warnings.warn_explicit(
                message,
                KindWarning,
                advice.filename or "<unknown>",
                advice.lineno or 0,
                module=advice.module,
            )
        except Exception:
            # The filters turned it into an error ("-W error"): raised here, on a
            # worker or watchdog thread, it would reach no caller and could kill the
            # thread. The log record above stands for it.
            logger.debug("KindWarning raised as an error by the warnings filters; ignored")
        return True

    def silence(self, obj: object) -> None:
        """Never advise `obj` (a function): `kind="auto"` decides its lane itself."""
        with self._lock:
            self._advised.add(_key_of(obj))

    def advised(self, obj: object) -> bool:
        with self._lock:
            return _key_of(obj) in self._advised

    # -- blocking tasks

    def after_blocking(
        self, task: object, cpu_seconds: float, wall_seconds: float, runnable_seconds: float = 0.0
    ) -> bool:
        """Advise `kind="cpu"` if a blocking task mostly computed; True if it did now.

        Call it on the worker thread after the task (a [ThreadMeter][] does), with the
        thread's CPU time, the task's wall time and the time the thread was runnable
        but had no core (a loaded machine: not time spent waiting in a sync call).
        """
        if wall_seconds < BLOCKING_MIN_SECONDS:
            return False
        # The scheduler accounts a wait for a core when the thread gets one, so the
        # runnable figure can spill over the task's edges: the thread ran at least
        # its CPU time.
        could_run = max(wall_seconds - max(runnable_seconds, 0.0), cpu_seconds)
        if could_run <= 0 or cpu_seconds < BLOCKING_CPU_SHARE * could_run:
            return False
        from ._call import unwrap_callable

        fn = unwrap_callable(task)
        name, filename, lineno, module = _describe(fn)
        advice = Advice(
            "blocking", "cpu", name, filename, lineno, module, wall_seconds,
            min(cpu_seconds / could_run, 1.0),
        )  # fmt: skip
        return self.emit(_key_of(fn), advice)

    # -- io tasks

    def watch_loop(
        self,
        key: object,
        call_soon_threadsafe: Callable[[Callable[[], object]], None],
        runner_codes: Iterable[CodeType],
    ) -> LoopWatch:
        """Watch the calling thread's event loop until the returned watch is closed.

        Call on the loop's thread when an io batch starts there; `runner_codes` are
        the code objects of the lane's functions that call (await) a task, so that the
        frame just inside one of them is the task's. Batches on the same loop share
        one watch.
        """
        with self._lock:
            dog = self._watchdog
            if dog is None or not dog.alive():
                dog = self._watchdog = _Watchdog(self)
        return dog.watch(key, call_soon_threadsafe, frozenset(runner_codes))

    def close(self) -> None:
        """Stop the watchdog thread (if any) and wait for it."""
        with self._lock:
            dog, self._watchdog = self._watchdog, None
        if dog is not None:
            dog.stop()


class ThreadMeter:
    """Measures the tasks of one worker thread for [Advisor.after_blocking][].

    Make, use and close it on that thread. A task costs one `time.thread_time()` and
    one `time.monotonic()`, which keep the GIL. After a task of at least 50 ms, the
    next task is measured with the thread's scheduler figures too (a `pread` of
    `/proc/thread-self/schedstat`, kept open, which releases the GIL: too dear for
    every task), so that on a loaded machine the time the thread was ready but had no
    core is not taken for waiting.

    ```python
    meter = ThreadMeter(advisor)
    try:
        for task in tasks:
            mark = meter.start()
            task()
            meter.stop(task, mark)
    finally:
        meter.close()
    ```
    """

    __slots__ = ("_advisor", "_fd", "_precise")

    def __init__(self, advisor: Advisor) -> None:
        self._advisor = advisor
        self._precise = False
        try:
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = -1

    def _read(self) -> tuple[float, float] | None:
        try:
            on_cpu, runnable = os.pread(self._fd, 64, 0).split()[:2]
            return int(on_cpu) / 1e9, int(runnable) / 1e9
        except (OSError, ValueError):
            return None

    def start(self) -> tuple[float, float, float]:
        """`(wall, cpu, runnable)` now; runnable is -1.0 when not read."""
        if self._precise and self._fd >= 0:
            got = self._read()
            if got is not None:
                return time.monotonic(), got[0], got[1]
        return time.monotonic(), time.thread_time(), -1.0

    def stop(self, task: object, mark: tuple[float, float, float]) -> bool:
        """Judge the task started at `mark`; True if it was advised now."""
        wall = time.monotonic() - mark[0]
        if wall < BLOCKING_MIN_SECONDS:  # the common case: nothing more to read
            self._precise = False
            return False
        self._precise = True  # long tasks come in batches: measure the next one fully
        if mark[2] < 0:
            return self._advisor.after_blocking(task, time.thread_time() - mark[1], wall)
        got = self._read()
        if got is None:
            return False
        return self._advisor.after_blocking(task, got[0] - mark[1], wall, got[1] - mark[2])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Phase(Enum):
    IDLE = "idle"  # no heartbeat in flight
    POSTED = "posted"  # a heartbeat is queued on the loop
    REPORTED = "reported"  # the current hold has been examined


class _Loop:
    """The watchdog's view of one event loop."""

    def __init__(
        self, post: Callable[[Callable[[], object]], None], codes: frozenset[CodeType]
    ) -> None:
        self.native_id = threading.get_native_id()
        self.ident = threading.get_ident()
        self.post = post
        self.codes = codes
        self.users = 0
        self.phase = _Phase.IDLE
        self.posted_at = 0.0
        self.suspect: tuple[FrameType, int] | None = None
        self.suspect_at = 0.0
        self.times_at_suspect: tuple[float, float] | None = None

    def beat(self) -> None:
        # Runs on the loop: it got a turn, so nothing holds it.
        self.phase = _Phase.IDLE
        self.suspect = None


class LoopWatch:
    """A batch's hold on a loop's watch; `close()` it when the batch ends."""

    def __init__(self, dog: _Watchdog, key: object) -> None:
        self._dog = dog
        self._key = key
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._dog.unwatch(self._key)


class _Watchdog:
    """A daemon thread that watches loops while io batches run on them."""

    def __init__(self, advisor: Advisor) -> None:
        self.advisor = advisor
        self.tick = advisor.threshold / 2
        self._loops: dict[object, _Loop] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._main, name="tasklanes-advice-watchdog", daemon=True
        )
        self._thread.start()

    def alive(self) -> bool:
        with self._cond:
            return not self._stopping and self._thread.is_alive()

    def watch(
        self,
        key: object,
        post: Callable[[Callable[[], object]], None],
        codes: frozenset[CodeType],
    ) -> LoopWatch:
        with self._cond:
            loop = self._loops.get(key)
            if loop is None:
                loop = self._loops[key] = _Loop(post, codes)
                self._cond.notify()
            else:
                loop.codes |= codes
            loop.users += 1
        return LoopWatch(self, key)

    def unwatch(self, key: object) -> None:
        with self._cond:
            loop = self._loops.get(key)
            if loop is not None:
                loop.users -= 1
                if loop.users <= 0:
                    del self._loops[key]

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _main(self) -> None:
        idle_since: float | None = None
        while True:
            with self._cond:
                if self._stopping:
                    return
                if not self._loops:
                    now = time.monotonic()
                    if idle_since is None:
                        idle_since = now
                    elif now - idle_since >= _IDLE_SECONDS:
                        self._stopping = True  # the advisor starts a new one when needed
                        return
                else:
                    idle_since = None
                self._cond.wait(self.tick)
                if self._stopping:
                    return
                loops = list(self._loops.values())
            self._check_all(loops)
            # Hold no loop between ticks: a closed event loop must be free to go.
            del loops

    def _check_all(self, loops: list[_Loop]) -> None:
        for loop in loops:
            try:
                self._check(loop, time.monotonic())
            except Exception:  # advice must never break the work it watches
                logger.exception("tasklanes: the advice watchdog failed")

    def _check(self, loop: _Loop, now: float) -> None:
        # While the loop answers, a tick only posts a heartbeat: no reads, and as few
        # GIL handoffs as possible (each one makes the loop thread wait for this one).
        if loop.phase is _Phase.IDLE:
            loop.phase = _Phase.POSTED
            loop.posted_at = now
            loop.post(loop.beat)
            return
        if loop.phase is not _Phase.POSTED:
            return
        held = now - loop.posted_at
        if held < self.advisor.threshold:
            return
        found = self._task_frame(loop)
        if found is None:
            loop.suspect = None
            return
        # One sample could catch a task that yields often on a merely busy loop: ask
        # for the same frame, at the same line, on two ticks in a row, and measure the
        # thread between them.
        if loop.suspect is None or loop.suspect[0] is not found[0] or loop.suspect[1] != found[1]:
            loop.suspect = (found[0], found[1])
            loop.suspect_at = now
            loop.times_at_suspect = thread_times(loop.native_id, loop.ident)
            return
        loop.phase = _Phase.REPORTED
        task_frame, _, inner = found
        # Share of the time the thread could run that it spent computing: time spent
        # runnable but waiting for a core (a loaded machine) is left out of the wall.
        now_times = thread_times(loop.native_id, loop.ident)
        before = loop.times_at_suspect
        watched = now - loop.suspect_at
        share = 0.0
        if now_times is not None and before is not None and watched > 0:
            cpu = max(now_times[0] - before[0], 0.0)
            could_run = max(watched - max(now_times[1] - before[1], 0.0), cpu)
            share = min(cpu / could_run, 1.0) if could_run > 0 else 0.0
        code = task_frame.f_code
        seen = _seen_at(task_frame)
        if inner is not task_frame:
            seen += f" (inside {inner.f_code.co_qualname}, {_seen_at(inner)})"
        advice = Advice(
            "io",
            "cpu" if share >= LOOP_CPU_SHARE else "blocking",
            code.co_qualname,
            code.co_filename,
            code.co_firstlineno,
            task_frame.f_globals.get("__name__"),
            held,
            share,
            seen,
        )
        self.advisor.emit(code, advice)

    @staticmethod
    def _task_frame(loop: _Loop) -> tuple[FrameType, int, FrameType] | None:
        """`(task frame, its line, innermost frame)` if a task holds the loop now."""
        innermost = sys._current_frames().get(loop.ident)
        frame = innermost
        inside: FrameType | None = None
        codes = loop.codes
        while frame is not None:
            if frame.f_code in codes:
                if inside is None or innermost is None:
                    return None  # the runner itself, between tasks
                return inside, inside.f_lineno, innermost
            inside = frame
            frame = frame.f_back
        return None
