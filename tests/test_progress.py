"""progress=True (a tqdm bar on stderr) and progress=callable (ProgressUpdate objects)."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator

import anyio
import pytest

import tasklanes
from tasklanes import ProgressUpdate, amap, as_completed, call, run_all, run_all_sync
from tasklanes._progress import Progress, _Bar, make_progress

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True, scope="module")
def _warm_trio_thread_cache() -> None:
    # anyio runs trio tests in guest mode, whose I/O thread comes from trio's process-wide
    # thread cache and idles there for 10 s. Start one cached thread before the first test
    # so that the leak check (tests/conftest.py) sees it as already running.
    import trio

    trio.lowlevel.start_thread_soon(lambda: None, lambda _: None)
    # Likewise the forkserver and multiprocessing's resource tracker (children that live
    # until exit) when the cpu lane first starts: start them before any test.
    if sys.platform == "linux":
        from multiprocessing import forkserver

        forkserver.ensure_running()


async def nap(i: int, seconds: float = 0.0) -> int:
    await anyio.sleep(seconds)
    return i


async def boom(i: int) -> int:
    await anyio.sleep(0)
    raise ValueError(f"task {i} failed")


def blocking_nap(i: int) -> int:
    time.sleep(0.005)
    return i


def check_sequence(updates: list[ProgressUpdate], total: int | None, done: int) -> None:
    assert updates, "no progress update at all"
    assert updates[0].done == 0
    assert not updates[0].finished
    assert [u.finished for u in updates].count(True) == 1
    assert updates[-1].finished
    assert updates[-1].done == done
    assert all(u.total == total for u in updates)
    dones = [u.done for u in updates]
    assert dones == sorted(dones)
    elapsed = [u.elapsed for u in updates]
    assert elapsed == sorted(elapsed)
    assert all(u.failed <= u.done for u in updates)


# -- progress=callable --------------------------------------------------------------


@pytest.mark.anyio
async def test_callable_receives_updates(anyio_backend: object) -> None:
    updates: list[ProgressUpdate] = []
    results = await run_all(
        [call(nap, i, 0.002 * (i % 5)) for i in range(50)], limit=10, progress=updates.append
    )
    assert results == list(range(50))
    check_sequence(updates, total=50, done=50)
    last = updates[-1]
    assert last.failed == 0
    assert last.rate > 0
    assert last.eta == 0


@pytest.mark.anyio
async def test_updates_are_throttled(anyio_backend: object) -> None:
    updates: list[ProgressUpdate] = []
    await run_all([call(nap, i) for i in range(2000)], progress=updates.append)
    check_sequence(updates, total=2000, done=2000)
    # a start, a few interim reports at most ~10 a second, and the end: not 2000
    assert len(updates) < 100


@pytest.mark.anyio
async def test_failures_are_counted(anyio_backend: object) -> None:
    updates: list[ProgressUpdate] = []
    tasks = [call(boom, i) if i % 4 == 0 else call(nap, i) for i in range(20)]
    results = await run_all(tasks, return_exceptions=True, progress=updates.append)
    assert sum(isinstance(r, ValueError) for r in results) == 5
    check_sequence(updates, total=20, done=20)
    assert updates[-1].failed == 5


@pytest.mark.anyio
async def test_timeouts_are_failures(anyio_backend: object) -> None:
    updates: list[ProgressUpdate] = []
    tasks = [call(nap, 0, 10.0), call(nap, 1), call(nap, 2)]
    results = await run_all(tasks, timeout=0.05, return_exceptions=True, progress=updates.append)
    assert isinstance(results[0], tasklanes.TaskTimeout)
    assert updates[-1].done == 3
    assert updates[-1].failed == 1


@pytest.mark.anyio
async def test_unknown_total(anyio_backend: object) -> None:
    async def tasks() -> AsyncIterator[object]:
        for i in range(15):
            yield call(nap, i)

    updates: list[ProgressUpdate] = []
    assert await run_all(tasks(), limit=3, progress=updates.append) == list(range(15))
    check_sequence(updates, total=None, done=15)
    assert all(u.eta is None for u in updates)

    updates.clear()
    generator = (call(nap, i) for i in range(7))
    assert await run_all(generator, progress=updates.append) == list(range(7))
    check_sequence(updates, total=None, done=7)


@pytest.mark.anyio
async def test_fail_fast_sends_one_final_update(anyio_backend: object) -> None:
    updates: list[ProgressUpdate] = []
    tasks = [call(boom, 0), *(call(nap, i, 5.0) for i in range(1, 10))]
    with pytest.raises(ValueError, match="task 0 failed"):
        await run_all(tasks, progress=updates.append)
    assert [u.finished for u in updates].count(True) == 1
    assert updates[-1].finished
    assert updates[-1].done < 10


@pytest.mark.anyio
async def test_cancelled_batch_sends_final_update(anyio_backend: object) -> None:
    updates: list[ProgressUpdate] = []
    with anyio.move_on_after(0.1):
        await run_all([call(nap, i, 10.0) for i in range(5)], progress=updates.append)
    assert updates[-1].finished
    assert updates[-1].done == 0


@pytest.mark.anyio
async def test_as_completed_and_amap(anyio_backend: object) -> None:
    updates: list[ProgressUpdate] = []
    seen = [i async for i, _ in as_completed([call(nap, i) for i in range(12)],
                                              progress=updates.append)]
    assert sorted(seen) == list(range(12))
    check_sequence(updates, total=12, done=12)

    updates.clear()
    out = [x async for x in amap(nap, range(9), limit=2, progress=updates.append)]
    assert out == list(range(9))
    assert updates[-1].done == 9
    assert updates[-1].finished


@pytest.mark.anyio
async def test_blocking_lane(anyio_backend: object) -> None:
    updates: list[ProgressUpdate] = []
    results = await run_all(
        [call(blocking_nap, i) for i in range(30)], kind="blocking", progress=updates.append
    )
    assert results == list(range(30))
    check_sequence(updates, total=30, done=30)


def test_cpu_lane_from_sync_code() -> None:
    updates: list[ProgressUpdate] = []
    with tasklanes.Scheduler(cpu_limit=2) as sched:
        results = sched.run_all_sync(
            [call(abs, -i) for i in range(10)], kind="cpu", progress=updates.append
        )
    assert results == list(range(10))
    check_sequence(updates, total=10, done=10)


@pytest.mark.anyio
async def test_a_failing_callable_is_raised_after_the_batch(anyio_backend: object) -> None:
    ran: list[int] = []

    async def task(i: int) -> int:
        ran.append(i)
        return i

    def broken(update: ProgressUpdate) -> None:
        if update.done >= 1:
            raise RuntimeError("my progress callback is broken")

    with pytest.raises(RuntimeError, match="callback is broken"):
        await run_all([call(task, i) for i in range(20)], limit=2, progress=broken)
    assert sorted(ran) == list(range(20))  # the batch itself was not disturbed


# -- bad arguments ------------------------------------------------------------------


@pytest.mark.anyio
async def test_bad_progress_argument(anyio_backend: object) -> None:
    with pytest.raises(TypeError, match="progress must be True"):
        await run_all([call(nap, 1)], progress="yes")  # type: ignore[call-overload]


@pytest.mark.anyio
async def test_missing_tqdm_names_the_extra(
    anyio_backend: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import tqdm.auto -> ImportError
    started: list[int] = []

    async def task() -> None:
        started.append(1)

    with pytest.raises(ImportError, match=r"tasklanes\[progress\]"):
        await run_all([task], progress=True)
    assert not started  # raised before any task started
    # a callable needs no extra
    assert await run_all([call(nap, 3)], progress=lambda u: None) == [3]


def test_false_and_none_mean_no_progress() -> None:
    assert make_progress(False) is None
    assert make_progress(None) is None
    assert isinstance(make_progress(print), Progress)


# -- progress=True: the tqdm bar --------------------------------------------------------


@pytest.mark.anyio
async def test_bar_on_stderr(anyio_backend: object, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = [call(boom, i) if i == 3 else call(nap, i, 0.001) for i in range(40)]
    results = await run_all(tasks, limit=8, return_exceptions=True, progress=True)
    assert isinstance(results[3], ValueError)
    out, err = capsys.readouterr()
    assert out == ""
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "40/40" in final
    assert "100%" in final
    assert "failed=1" in final
    assert "task/s" in final


@pytest.mark.anyio
async def test_bar_without_total_spins(
    anyio_backend: object, capsys: pytest.CaptureFixture[str]
) -> None:
    out = [x async for x in amap(nap, iter(range(25)), limit=5, progress=True)]
    assert out == list(range(25))
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[0].startswith(("|", "/", "-", "\\"))  # the spinner
    assert "%" not in err  # no percentage without a total
    assert "25 tasks" in lines[-1]
    assert "failed=0" in lines[-1]


def test_bar_from_run_all_sync(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_all_sync([call(blocking_nap, i) for i in range(10)], kind="blocking",
                        progress=True) == list(range(10))
    err = capsys.readouterr().err
    assert "10/10" in err


def test_bar_uses_tqdm_auto_without_a_monitor_thread() -> None:
    # tqdm.auto: a text bar in a terminal, a widget in Jupyter.
    from tqdm.auto import tqdm

    bar = _Bar()
    assert issubclass(bar._tqdm, tqdm)
    assert bar._tqdm.monitor_interval == 0


def test_bar_draws_each_update(capsys: pytest.CaptureFixture[str]) -> None:
    bar = _Bar()
    bar(ProgressUpdate(0, 4, 0, 0.0, 0.0, None, False))
    bar(ProgressUpdate(2, 4, 1, 0.5, 4.0, 0.5, False))
    bar(ProgressUpdate(4, 4, 1, 1.0, 4.0, 0.0, True))
    err = capsys.readouterr().err
    frames = [f for f in err.split("\r") if f.strip()]
    assert any("2/4" in f and "failed=1" in f for f in frames)
    assert "4/4" in frames[-1]
