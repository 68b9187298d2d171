"""Start methods and the main module (tasklanes/_processes/_context.py), in real
subprocesses: how each way of running Python is seen, scripts read from standard input,
the ``__main__``-guard advice only when it is the cause, and forked workers that
notice their parent's death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

SRC = str(Path(__file__).resolve().parents[1] / "src")
METHODS = ["fork", "forkserver", "spawn"]
GUARD_ADVICE = "put the code that starts the work under"


def python(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, *args],
        input=stdin, capture_output=True, text=True, timeout=90, env=env, cwd=cwd,
    )


PRINT_VERDICT = (
    "from tasklanes._processes._context import main_is_importable; print(main_is_importable())"
)


def test_which_mains_a_worker_can_import(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(PRINT_VERDICT)
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(PRINT_VERDICT)
    seen = {
        "python job.py": python("job.py", cwd=tmp_path),
        "python -m job": python("-m", "job", cwd=tmp_path),
        "python -m pkg": python("-m", "pkg", cwd=tmp_path),
        "python -c": python("-c", PRINT_VERDICT, cwd=tmp_path),
        "python - < job.py": python("-", stdin=PRINT_VERDICT, cwd=tmp_path),
    }
    verdicts = {how: proc.stdout.strip() or proc.stderr for how, proc in seen.items()}
    assert verdicts == {
        "python job.py": "True",
        "python -m job": "True",
        "python -m pkg": "False",  # multiprocessing does not run a __main__ submodule again
        "python -c": "False",
        "python - < job.py": "False",
    }


def test_the_forkserver_does_not_preload_a_main_that_has_no_file() -> None:
    code = (
        "from multiprocessing import forkserver\n"
        "from tasklanes._processes._context import default_context\n"
        "default_context()\n"
        "print(forkserver._forkserver._preload_modules)\n"
    )
    proc = python("-", stdin=code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['tasklanes._processes._worker']"


UNGUARDED = """
import math, sys
from tasklanes import Scheduler, call
with Scheduler(mp_context=sys.argv[1]) as sched:
    print(sched.run_all_sync([call(math.factorial, 5) for _ in range(3)], kind="cpu"))
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_an_unguarded_script_is_told_to_add_the_guard(method: str, tmp_path: Path) -> None:
    (tmp_path / "unguarded.py").write_text(UNGUARDED)
    started = time.monotonic()
    proc = python("unguarded.py", method, cwd=tmp_path)
    assert proc.returncode != 0
    assert "could not start a worker process" in proc.stderr
    assert GUARD_ADVICE in proc.stderr
    assert 'if __name__ == "__main__":' in proc.stderr
    assert time.monotonic() - started < 60


def test_an_unguarded_script_is_fine_under_fork(tmp_path: Path) -> None:
    # fork does not import the main module again: nothing to guard against.
    (tmp_path / "unguarded.py").write_text(UNGUARDED)
    proc = python("-W", "ignore:This process:DeprecationWarning", "unguarded.py", "fork",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[120, 120, 120]"


REFUSES_WORKERS = """
import math, sys
if __name__ == "__mp_main__":
    raise RuntimeError("this script refuses to be imported by a worker")
from tasklanes import Scheduler, call
if __name__ == "__main__":
    with Scheduler(mp_context=sys.argv[1]) as sched:
        print(sched.run_all_sync([call(math.factorial, 5)], kind="cpu"))
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_workers_that_fail_to_start_for_another_reason_get_no_guard_advice(
    method: str, tmp_path: Path
) -> None:
    (tmp_path / "guarded.py").write_text(REFUSES_WORKERS)
    proc = python("guarded.py", method, cwd=tmp_path)
    assert proc.returncode != 0
    assert "could not start a worker process" in proc.stderr
    assert "exited (code 1) before it was ready" in proc.stderr
    assert "refuses to be imported by a worker" in proc.stderr  # the worker's own words
    assert GUARD_ADVICE not in proc.stderr


def test_a_script_on_stdin_is_not_blamed_for_a_missing_guard() -> None:
    # The report of issue 13: "python - < job.py" could not start a worker and was
    # told to add a __main__ guard. Now it runs.
    code = UNGUARDED.replace("sys.argv[1]", "None")
    proc = python("-", stdin=code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[120, 120, 120]"
    assert GUARD_ADVICE not in proc.stderr


ORPHANED = """
import os, sys, time
from tasklanes import Scheduler, call
from tests import _tasks as T
if __name__ == "__main__":
    with Scheduler(mp_context=sys.argv[1], cpu_limit=1) as sched:
        sched.run_all_sync([call(T.write_pid_and_spin, sys.argv[2])], kind="cpu")
"""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_exits_when_its_parent_dies(method: str, tmp_path: Path) -> None:
    # A forked worker inherits every descriptor of the parent, the write end of the
    # pool's "alive" pipe included: unless it closes it, the pipe never reaches end of
    # file and a worker running a long task outlives a killed parent.
    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "parent.py"
    script.write_text(ORPHANED)
    marker = tmp_path / "pid"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(root)]))
    parent = subprocess.Popen(
        [sys.executable, "-W", "ignore:This process:DeprecationWarning", str(script),
         method, str(marker)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text()):
            assert parent.poll() is None, parent.stderr.read() if parent.stderr else ""
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.02)
        worker = int(marker.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 15
        while pid_alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = pid_alive(worker)
        if alive:
            os.kill(worker, signal.SIGKILL)
        assert not alive, "the worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stderr:
            parent.stderr.close()
