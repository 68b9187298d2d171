"""Interrupts: Ctrl-C during ``run_all_sync``, interpreter exit and a hard kill of the
parent while a batch runs. Each runs a real Python subprocess.

Checks: ``KeyboardInterrupt`` arrives promptly; when it does, the batch's cpu workers
are dead and its blocking tasks have returned; the process exits promptly; and no
process it started (workers, forkserver, resource tracker) outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import tasklanes

from ._helpers import pid_running

pytestmark = [pytest.mark.timeout(60)]

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SRC = Path(tasklanes.__file__).resolve().parent.parent  # the tasklanes under test

SCRIPT = textwrap.dedent(
    r'''
    import json, os, sys, threading, time
    from pathlib import Path

    import anyio
    import tasklanes
    from tasklanes import call
    import tests._reliability_tasks as T
    from tests._helpers import pid_running


    def blocking_task(d, i):
        Path(d, f"bstart-{i}").write_text(str(threading.get_ident()))
        try:
            T.cooperative_sleep(60)
        finally:
            Path(d, f"bend-{i}").write_text("x")


    def cpu_tasks(d):
        return [call(T.pid_then_sleep, f"{d}/cpu-{i}", 60) for i in range(3)]


    def blocking_tasks(d):
        return [call(blocking_task, d, i) for i in range(3)]


    def report(d):
        cpu = [int(p.read_text()) for p in Path(d).glob("cpu-?")]
        started = {p.name[7:] for p in Path(d).glob("bstart-*")}
        ended = {p.name[5:] for p in Path(d).glob("bend-*")}
        return {
            "cpu_alive": [p for p in cpu if pid_running(p)],
            "cpu_started": len(cpu),
            "blocking_running": sorted(started - ended),
            "blocking_started": len(started),
            "threads": [t.name for t in threading.enumerate()],
        }


    def main():
        mode, d = sys.argv[1], sys.argv[2]
        if mode in ("exit", "exit-blocking"):
            # A batch runs on another thread while the main thread leaves: interpreter exit.
            if mode == "exit":
                tasks, kind = cpu_tasks(d), "cpu"
            else:
                tasks = [call(T.cooperative_sleep, 2, f"{d}/bstart-{i}") for i in range(2)]
                kind = "blocking"
            def batch():
                try:
                    tasklanes.run_all_sync(tasks, kind)
                except RuntimeError as exc:
                    # Expected: closing the scheduler at exit fails the batch's
                    # unfinished tasks rather than leave its caller waiting.
                    print("BATCH-ENDED " + type(exc).__name__, flush=True)

            threading.Thread(target=batch, daemon=True).start()
            sys.stdin.readline()  # the test has seen the workers: go
            print("EXITING", flush=True)
            return
        try:
            if mode == "cpu":
                tasklanes.run_all_sync(cpu_tasks(d), "cpu")
            elif mode == "blocking":
                tasklanes.run_all_sync(blocking_tasks(d), "blocking")
            elif mode == "mixed":
                async def both():
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(tasklanes.run_all, cpu_tasks(d), "cpu")
                        tg.start_soon(tasklanes.run_all, blocking_tasks(d), "blocking")
                anyio.run(both)
            elif mode == "hold":
                tasklanes.run_all_sync(cpu_tasks(d), "cpu")
        except KeyboardInterrupt:
            print("KI " + json.dumps(report(d)), flush=True)
            return
        print("NO-KI", flush=True)


    if __name__ == "__main__":
        main()
    '''
)


def proc_table() -> dict[int, int]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    table[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return table


def descendants(root: int) -> set[int]:
    table = proc_table()
    found: set[int] = set()
    stack = [root]
    while stack:
        parent = stack.pop()
        for pid, ppid in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                stack.append(pid)
    return found


def start(tmp: Path, mode: str) -> subprocess.Popen[str]:
    script = tmp / "script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(ROOT)]))
    return subprocess.Popen(
        [sys.executable, str(script), mode, str(tmp)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,  # its own process group: a Ctrl-C to it alone
    )


def wait_started(tmp: Path, mode: str, proc: subprocess.Popen[str]) -> None:
    want = {"cpu": ["cpu-?"], "blocking": ["bstart-*"], "mixed": ["cpu-?", "bstart-*"]}
    deadline = time.monotonic() + 20
    while True:
        if all(len(list(tmp.glob(g))) >= 2 for g in want.get(mode, ["cpu-?"])):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate(timeout=5)
            raise AssertionError(f"the tasks did not start: {out}\n{err}")
        time.sleep(0.02)


def assert_no_orphans(pids: set[int], what: str) -> None:
    deadline = time.monotonic() + 5
    while True:
        alive = sorted(p for p in pids if pid_running(p))
        if not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: processes outlived it: {alive}")
        time.sleep(0.02)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def finish(proc: subprocess.Popen[str], seconds: float) -> tuple[str, str, float]:
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"did not exit within {seconds} s:\n{out}\n{err}") from None
    return out, err, time.monotonic() - t0


@pytest.mark.parametrize(
    ("mode", "group"),
    [("cpu", False), ("cpu", True), ("blocking", False), ("mixed", True)],
    ids=["cpu", "cpu-ctrl-c-to-group", "blocking", "mixed-ctrl-c-to-group"],
)
def test_ctrl_c_during_run_all_sync(tmp_path: Path, mode: str, group: bool) -> None:
    proc = start(tmp_path, mode)
    try:
        wait_started(tmp_path, mode, proc)
        before = descendants(proc.pid)
        t0 = time.monotonic()
        if group:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        else:
            os.kill(proc.pid, signal.SIGINT)
        out, err, _ = finish(proc, 10)
        elapsed = time.monotonic() - t0
    finally:
        stop(proc)
    line = next((x for x in out.splitlines() if x.startswith("KI ")), None)
    assert line is not None, f"no KeyboardInterrupt: {out}\n{err}"
    info: dict[str, Any] = json.loads(line[3:])
    assert elapsed < 5, f"Ctrl-C took {elapsed:.2f} s to stop the script"
    # When KeyboardInterrupt reached the caller, none of the batch's work ran any more.
    assert info["cpu_alive"] == [], info
    assert info["blocking_running"] == [], info
    assert proc.returncode == 0, (out, err)
    assert "Traceback" not in err, err
    assert_no_orphans(before, "the interrupted script")


@pytest.mark.parametrize("mode", ["exit", "exit-blocking"], ids=["cpu", "blocking"])
def test_interpreter_exit_while_a_batch_runs(tmp_path: Path, mode: str) -> None:
    """The main thread returns while a batch runs on a daemon thread. cpu: the workers
    (60 s tasks) are killed at exit, at once. blocking: a thread cannot be killed; the
    exit hook waits at most for the running tasks (2 s) to return, never hangs."""
    proc = start(tmp_path, mode)
    try:
        wait_started(tmp_path, "blocking" if mode == "exit-blocking" else "cpu", proc)
        before = descendants(proc.pid)
        workers = {int(p.read_text()) for p in tmp_path.glob("cpu-?")}
        assert workers <= before, (workers, before)
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err, elapsed = finish(proc, 15)
    finally:
        stop(proc)
    assert "EXITING" in out, (out, err)
    bound = 3 if mode == "exit" else 2 + 3
    assert elapsed < bound, f"exit took {elapsed:.2f} s"
    assert "Traceback" not in err, err
    assert_no_orphans(before, "interpreter exit")


def test_parent_killed_hard_while_a_batch_runs(tmp_path: Path) -> None:
    """SIGKILL to the parent: no atexit, no cleanup code runs. The workers notice (end
    of file on their alive pipe) and exit; so does the forkserver."""
    proc = start(tmp_path, "hold")
    try:
        wait_started(tmp_path, "cpu", proc)
        before = descendants(proc.pid)
        proc.kill()
        proc.wait(10)
    finally:
        stop(proc)
        proc.communicate()
    assert_no_orphans(before, "a parent killed with SIGKILL")
