"""How cpu tasks travel to workers (tasklanes/_processes/_pickling.py): by reference
when a worker can import them, by value (cloudpickle) when it cannot -- lambdas,
closures, and what an interactive ``__main__`` defines (Jupyter/IPython, ``python -c``,
a script read from standard input). The sessions themselves run in real subprocesses,
under each start method."""

from __future__ import annotations

import operator
import pickle
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path

import pytest

from tasklanes import call
from tasklanes._processes import _context, _pickling

from . import _tasks as T

pytestmark = pytest.mark.timeout(120)

SRC = str(Path(__file__).resolve().parents[1] / "src")
METHODS = ["fork", "forkserver", "spawn"]
# Python 3.12+ warns about fork() with threads alive; under -W error that only matters
# for the fork start method, which a test selects deliberately.
FORK_OK = "-Wignore:This process:DeprecationWarning"


def in_a_fresh_python(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -W error <args>`` with these sources first on the path."""
    import os

    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-W", "error", FORK_OK, *args],
        input=stdin, capture_output=True, text=True, timeout=90, env=env, cwd=cwd,
    )


@pytest.fixture
def interactive_main(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A ``__main__`` without a file, as IPython and ``python -c`` have."""
    main = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    return main


def define_in(main: types.ModuleType, source: str) -> None:
    exec(textwrap.dedent(source), main.__dict__)


# ----------------------------------------------------------------------------- unit


def test_what_a_worker_can_import_goes_by_reference_untouched() -> None:
    data = _pickling.dumps_chunk(T.double, [(1,), (2,)])
    assert data == pickle.dumps((T.double, [(1,), (2,)]), pickle.HIGHEST_PROTOCOL)
    assert _pickling.dumps_chunk(None, [call(operator.neg, 3)]) == pickle.dumps(
        (None, [call(operator.neg, 3)]), pickle.HIGHEST_PROTOCOL
    )


def test_a_lambda_and_a_closure_go_by_value_and_load_with_plain_pickle() -> None:
    n = 7

    def add(x: int) -> int:
        return x + n

    fn, seq = pickle.loads(_pickling.dumps_chunk(None, [lambda: 5, call(add, 1)]))
    assert fn is None and [task() for task in seq] == [5, 8]
    fn, seq = pickle.loads(_pickling.dumps_chunk(add, [(1,), (2,)]))
    assert [fn(*args) for args in seq] == [8, 9]


def test_what_an_interactive_main_defines_goes_by_value(
    interactive_main: types.ModuleType,
) -> None:
    define_in(interactive_main, """
        class Point:
            def __init__(self, x):
                self.x = x
        def square(x):
            return x * x
    """)
    assert not _context.main_is_importable()
    # Plain pickle accepts these (by name)...
    assert b"__main__" in pickle.dumps(interactive_main.square)
    # ...but a worker has no such __main__: they must travel by value.
    data = _pickling.dumps_chunk(interactive_main.square, [(3,)])
    assert b"cloudpickle" in data
    # An argument of a class of that __main__ too, with a function a worker can import.
    data = _pickling.dumps_chunk(T.sleep_return, [(0, interactive_main.Point(1))])
    assert b"cloudpickle" in data
    # What comes from an importable module is still sent by reference.
    assert b"cloudpickle" not in _pickling.dumps_chunk(T.double, [(3,)])


def test_a_script_file_main_keeps_pickle_by_reference(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "job.py"
    script.write_text("def square(x):\n    return x * x\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    define_in(main, script.read_text())
    assert _context.main_is_importable()
    data = _pickling.dumps_chunk(main.square, [(3,)])
    assert b"cloudpickle" not in data  # spawn and forkserver workers run job.py again


def test_a_function_that_needs_cloudpickle_is_decided_once(
    interactive_main: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    define_in(interactive_main, "def cube(x):\n    return x ** 3\n")
    plain_calls = []
    real_plain = _pickling._plain

    def counting_plain(obj: object, protocol: int) -> bytes:
        plain_calls.append(obj)
        return real_plain(obj, protocol)

    monkeypatch.setattr(_pickling, "_plain", counting_plain)
    _pickling.check_task_function(call(interactive_main.cube, 1), 0)
    assert len(plain_calls) == 1
    for k in range(3):
        data = _pickling.dumps_chunk(interactive_main.cube, [(k,)])
        fn, seq = pickle.loads(data)
        assert fn(*seq[0]) == k**3
    assert len(plain_calls) == 1, "chunks of a known by-value function skip plain pickle"


def test_lambdas_made_in_a_loop_are_checked_once_per_code_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cloudpickle

    dumps_calls = []
    real = cloudpickle.dumps

    def counting(obj: object, *args: object, **kwargs: object) -> bytes:
        dumps_calls.append(obj)
        return real(obj, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cloudpickle, "dumps", counting)
    for i in range(100):
        _pickling.check_task_function(lambda i=i: i, i)
    assert len(dumps_calls) == 1


def test_without_cloudpickle_the_error_names_the_extra_and_the_reason(
    interactive_main: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    define_in(interactive_main, "def square(x):\n    return x * x\n")
    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    n = 1

    def closure() -> int:
        return n

    cases = {
        "a lambda": lambda: 1,
        "a function defined inside another function": closure,
        "defined in the __main__ module": call(interactive_main.square, 2),
    }
    for reason, task in cases.items():
        with pytest.raises(TypeError) as info:
            _pickling.check_task_function(task, 4)
        message = str(info.value)
        assert "task 4" in message
        assert reason in message
        assert "pip install 'tasklanes[interactive]'" in message
    # The chunk path says the same, for arguments the up-front check does not see.
    with pytest.raises(TypeError, match=r"tasklanes\[interactive\]"):
        _pickling.dumps_chunk(T.sleep_return, [(0, lambda: 1)])


def test_what_does_not_pickle_at_all_gets_no_advice_to_install_anything() -> None:
    lock = threading.Lock()
    with pytest.raises(TypeError) as info:
        _pickling.check_task_function(lock.acquire, 2)
    assert "task 2" in str(info.value) and "does not pickle" in str(info.value)
    assert "tasklanes[interactive]" not in str(info.value)
    with pytest.raises(TypeError, match="lock"):
        _pickling.dumps_chunk(T.sleep_return, [(0, lock)])


def test_a_result_of_a_class_sent_by_value_comes_back_as_that_class() -> None:
    class Local:
        def __init__(self, x: int) -> None:
            self.x = x

    value = Local(3)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(value)
    data = _pickling.result_by_value(value)
    assert data is not None
    back = pickle.loads(data)
    assert type(back) is Local and back.x == 3  # cloudpickle keeps the class's identity
    assert _pickling.result_by_value(threading.Lock()) is None


# ---------------------------------------------------------------- interactive sessions

SESSION = """
import sys
from dataclasses import dataclass

import anyio
from tasklanes import Scheduler, call, offload

sched = Scheduler(mp_context=sys.argv[-1])

@offload(kind="cpu", scheduler=sched)
def cube(x):
    return x ** 3

@dataclass
class Point:
    x: int

def square(x):
    return x * x

def make_adder(n):
    def add(x):
        return x + n
    return add

def to_point(x):
    return Point(x)

class Oops(Exception):
    pass

def fail(message):
    raise Oops(message)

async def offloaded():
    return await cube(2), await cube.map(range(3))

with sched:
    assert anyio.run(offloaded) == (8, [0, 1, 8])
    assert sched.run_all_sync([call(square, i) for i in range(5)], kind="cpu") == [0, 1, 4, 9, 16]
    assert sched.run_all_sync([lambda i=i: i + 1 for i in range(3)], kind="cpu") == [1, 2, 3]
    assert sched.run_all_sync([call(make_adder(10), 1)], kind="cpu") == [11]
    points = sched.run_all_sync([call(to_point, 2)], kind="cpu")
    assert points == [Point(2)] and type(points[0]) is Point
    try:
        sched.run_all_sync([call(fail, "no luck")], kind="cpu")
    except Oops as exc:  # the session's own class, not a stand-in
        assert str(exc) == "no luck"
        assert "Traceback in worker process" in exc.__notes__[0]
    else:
        raise AssertionError("Oops was not raised")
print("session ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_python_c_runs_its_functions_lambdas_and_closures(method: str) -> None:
    proc = in_a_fresh_python("-c", SESSION, method)
    assert proc.returncode == 0, proc.stderr
    assert "session ok" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_a_script_read_from_stdin_runs_its_functions_lambdas_and_closures(method: str) -> None:
    # Before: no worker could even start (the forkserver/spawn child tried to run a
    # file named "<stdin>"), and the error blamed a missing __main__ guard.
    proc = in_a_fresh_python("-", method, stdin=SESSION)
    assert proc.returncode == 0, proc.stderr
    assert "session ok" in proc.stdout
    assert "__main__" not in proc.stderr


IPYTHON_SESSION = """
import sys
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
cells = [
    "from tasklanes import Scheduler, call",
    "def square(x):\\n    return x * x",
    "sched = Scheduler(mp_context=%r)" % sys.argv[-1],
    "out = await sched.run_all([call(square, i) for i in range(4)], kind='cpu')",
    "out2 = sched.run_all_sync([lambda: square(5)], kind='cpu')",
    "sched.close()",
]
for cell in cells:
    result = shell.run_cell(cell)
    if not result.success:
        raise SystemExit(f"cell failed: {cell!r}: {result.error_in_exec or result.error_before_exec!r}")
print(shell.user_ns["out"], shell.user_ns["out2"])
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_an_ipython_session_runs_functions_defined_in_its_cells(method: str) -> None:
    pytest.importorskip("IPython")
    proc = in_a_fresh_python("-c", IPYTHON_SESSION, method)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[0, 1, 4, 9] [25]" in proc.stdout


WITHOUT_CLOUDPICKLE = """
import sys
sys.modules["cloudpickle"] = None  # as if the interactive extra were not installed
import math
from tasklanes import run_all_sync, call

def square(x):
    return x * x

for tasks in ([call(square, 2)], [lambda: 1]):
    try:
        run_all_sync(tasks, kind="cpu")
    except TypeError as exc:
        print("TypeError:", exc)
print(run_all_sync([call(math.factorial, 5)], kind="cpu"))
"""


@pytest.mark.slow
def test_without_cloudpickle_an_interactive_session_is_told_which_extra_to_install() -> None:
    proc = in_a_fresh_python("-c", WITHOUT_CLOUDPICKLE)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    assert "'square'" in lines[0] and "'python -c' code" in lines[0]
    assert "a lambda" in lines[1]
    for line in lines[:2]:
        assert line.startswith("TypeError: task 0")
        assert "pip install 'tasklanes[interactive]'" in line
    assert lines[2] == "[120]"  # what pickles by reference still runs
