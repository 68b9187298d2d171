"""The zygote: the default start of the cpu pool in a process with one thread.

Each test runs a real script in a fresh interpreter, where the thread count at the
pool's start is known (a pytest process may hold threads of other tests' plugins).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ._helpers import run_json_script as run_script

pytestmark = [pytest.mark.timeout(60)]


COMMON = """
import json, os, sys, threading, time
from pathlib import Path
from tasklanes import Scheduler, call

IMPORTED = Path(sys.argv[1]) / f"imported-{os.getpid()}"
IMPORTED.write_text(__name__)  # once per process that runs this file

SETTING = "before the pool"


def setting(_: int) -> tuple[int, str]:
    return os.getpid(), SETTING


def sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def crash() -> None:
    os._exit(3)


def pool_of(sched):
    return sched._lanes["cpu"].pool
"""


def test_a_single_threaded_script_gets_a_zygote_and_is_not_imported_again(
    tmp_path: Path,
) -> None:
    out = run_script(
        tmp_path,
        COMMON
        + """
if __name__ == "__main__":
    with Scheduler(cpu_limit=2) as sched:
        first = sched.run_all_sync([call(setting, i) for i in range(8)], kind="cpu")
        method = pool_of(sched).start_method
        SETTING = "changed after the pool started"
        # A worker killed for its timeout, one that crashes: their replacements are
        # forked by the same zygote, so they see what the first workers saw.
        sched.run_all_sync([call(sleep, 30)], kind="cpu", timeout=0.5, return_exceptions=True)
        sched.run_all_sync([call(crash)], kind="cpu", return_exceptions=True)
        later = sched.run_all_sync([call(setting, i) for i in range(8)], kind="cpu")
        zygote = pool_of(sched)._manager.zygote.pid
    print(json.dumps({"method": method, "first": first, "later": later, "zygote": zygote,
                      "parent": os.getpid()}))
""",
        str(tmp_path),
    )
    assert out["method"] == "zygote"
    assert {s for _, s in out["first"]} == {"before the pool"}
    assert {s for _, s in out["later"]} == {"before the pool"}
    first_pids = {p for p, _ in out["first"]}
    later_pids = {p for p, _ in out["later"]}
    assert out["parent"] not in first_pids | later_pids
    # Only the parent ran the script's top level: no worker imported it again.
    imported = sorted(p.name for p in tmp_path.glob("imported-*"))
    assert imported == [f"imported-{out['parent']}"]
    # Every process is gone once the Scheduler is closed: workers and the zygote.
    for pid in first_pids | later_pids | {out["zygote"]}:
        assert not Path(f"/proc/{pid}").exists() or _zombie_of_other(pid)


def _zombie_of_other(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_with_a_thread_running_the_default_is_the_forkserver(tmp_path: Path) -> None:
    out = run_script(
        tmp_path,
        COMMON
        + """
if __name__ == "__main__":
    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
    with Scheduler(cpu_limit=1) as sched:
        r = sched.run_all_sync([call(setting, 0)], kind="cpu")
        method = pool_of(sched).start_method
    print(json.dumps({"method": method, "r": r}))
""",
        str(tmp_path),
    )
    assert out["method"] == "forkserver"
    assert out["r"][0][1] == "before the pool"


def test_a_thread_python_does_not_know_of_counts_too(tmp_path: Path) -> None:
    # faulthandler's watchdog is a C thread: threading.enumerate() does not list it,
    # the operating system does.
    out = run_script(
        tmp_path,
        COMMON
        + """
if __name__ == "__main__":
    import faulthandler
    faulthandler.dump_traceback_later(30)
    python_threads = threading.active_count()
    with Scheduler(cpu_limit=1) as sched:
        sched.run_all_sync([call(setting, 0)], kind="cpu")
        method = pool_of(sched).start_method
    faulthandler.cancel_dump_traceback_later()
    with Scheduler(cpu_limit=1) as sched:  # the C thread is gone now
        sched.run_all_sync([call(setting, 0)], kind="cpu")
        after = pool_of(sched).start_method
    print(json.dumps({"python_threads": python_threads, "method": method, "after": after}))
""",
        str(tmp_path),
    )
    assert out["python_threads"] == 1
    assert out["method"] == "forkserver"
    assert out["after"] == "zygote"


def test_a_closed_scheduler_leaves_no_thread_so_the_next_gets_a_zygote(tmp_path: Path) -> None:
    out = run_script(
        tmp_path,
        COMMON
        + """
if __name__ == "__main__":
    methods = []
    for _ in range(4):
        with Scheduler(cpu_limit=2) as sched:
            sched.run_all_sync([call(setting, i) for i in range(4)], kind="cpu")
            methods.append(pool_of(sched).start_method)
        time.sleep(0.1)  # what the OS needs to drop threads Python has joined, and more
    print(json.dumps({"methods": methods}))
""",
        str(tmp_path),
    )
    assert out["methods"] == ["zygote"] * 4


def test_an_explicit_start_method_is_kept(tmp_path: Path) -> None:
    out = run_script(
        tmp_path,
        COMMON
        + """
if __name__ == "__main__":
    methods = {}
    for name in ("fork", "forkserver", "spawn"):
        with Scheduler(cpu_limit=1, mp_context=name) as sched:
            sched.run_all_sync([call(setting, 0)], kind="cpu")
            methods[name] = pool_of(sched).start_method
    print(json.dumps(methods))
""",
        str(tmp_path),
    )
    assert {k: out[k] for k in ("fork", "forkserver", "spawn")} == {
        "fork": "fork",
        "forkserver": "forkserver",
        "spawn": "spawn",
    }


def test_workers_do_not_hold_the_programs_descriptors(tmp_path: Path) -> None:
    # A pipe (say, a connection) open when the pool starts and closed by the program
    # afterwards is really closed: no worker, and not the zygote, keeps it open.
    out = run_script(
        tmp_path,
        COMMON
        + """
def fd_target(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


if __name__ == "__main__":
    r, w = os.pipe()
    with Scheduler(cpu_limit=2) as sched:
        seen = sched.run_all_sync([call(fd_target, w)], kind="cpu")[0]
        os.close(w)
        eof = os.read(r, 1) == b""  # would block for ever if a worker held `w`
        method = pool_of(sched).start_method
    print(json.dumps({"method": method, "seen": seen, "eof": eof}))
""",
        str(tmp_path),
    )
    assert out["method"] == "zygote"
    assert out["seen"] == "/dev/null"
    assert out["eof"] is True


def test_signal_handlers_and_buffered_output_stay_with_the_program(tmp_path: Path) -> None:
    out = run_script(
        tmp_path,
        COMMON
        + """
import signal


def handler_is_default() -> bool:
    print("from a worker", flush=True)  # writes whatever its stdout buffer held
    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: None)  # the program's, not the workers'
    print("buffered line", end="")  # not flushed yet: must not be written twice
    with Scheduler(cpu_limit=2) as sched:
        default = sched.run_all_sync([call(handler_is_default) for _ in range(4)], kind="cpu")
        # A worker that ignored SIGTERM would make the timeout kill wait for SIGKILL.
        t = time.monotonic()
        sched.run_all_sync([call(sleep, 30)], kind="cpu", timeout=0.2, return_exceptions=True)
        took = time.monotonic() - t
        method = pool_of(sched).start_method
    print()
    print(json.dumps({"method": method, "default": default, "took": took}))
""",
        str(tmp_path),
    )
    assert out["method"] == "zygote"
    assert out["default"] == [True] * 4
    assert out["stdout"].count("buffered line") == 1
    assert out["stdout"].count("from a worker") == 4
    assert out["took"] < 20


def test_a_trio_run_gets_the_forkserver(tmp_path: Path) -> None:
    pytest.importorskip("trio")
    out = run_script(
        tmp_path,
        COMMON
        + """
import anyio
from tasklanes import run_all


async def main():
    with Scheduler(cpu_limit=1) as sched:
        r = await run_all([call(setting, 0)], kind="cpu", scheduler=sched)
        return r, pool_of(sched).start_method


if __name__ == "__main__":
    trio_r, trio_method = anyio.run(main, backend="trio")
    asyncio_r, asyncio_method = anyio.run(main, backend="asyncio")
    print(json.dumps({"trio": trio_method, "asyncio": asyncio_method}))
""",
        str(tmp_path),
    )
    # trio keeps its run state in the thread: a forked worker would think it runs
    # inside trio. asyncio checks the process id, so a zygote is fine there.
    assert out["trio"] == "forkserver"
    assert out["asyncio"] == "zygote"
