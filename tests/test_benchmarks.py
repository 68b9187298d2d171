"""The benchmark suite's smoke mode, so that the benchmarks never rot.

``benchmarks/run.py --quick`` runs every case with tiny sizes in a subprocess (one round, the
slow whole-process cases side by side); this checks that it writes results.json with every
case and positive figures, and results.md with the table. Peers that are not installed are
skipped by the suite with a note (the `test` extra holds trio, uvloop, uvicorn, starlette,
httpx and distributed; the rest of the peers come with the `bench` extra).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def expected_cases() -> set[str]:
    cases = {
        "io.trivial", "io.sleep10ms", "blocking.trivial", "blocking.sleep5ms",
        "timeout.io", "timeout.blocking", "timeout.cpu",
        "cpu.trivial", "cpu.heavy", "cpu.cold", "cpu.crash", "io.rss",
    }
    if have("uvloop"):
        cases |= {"uvloop.trivial", "uvloop.sleep10ms"}
    if have("trio"):
        cases |= {"trio.trivial", "trio.sleep10ms"}
    if have("distributed"):
        cases |= {"dask.trivial", "dask.heavy"}
    if have("joblib"):
        cases.add("cpu.warm_vs_fresh")
    # Issue 14's floor group.
    cases |= {"floor.io.gen", "floor.io.list", "floor.io.sleep10ms", "floor.io.gen_script",
              "floor.io.list_script", "floor.cpu.warm_gen",
              "floor.cpu.warm_list", "floor.cpu.warm_amap", "floor.cpu.oneshot", "floor.cpu.oneshot_heavy",
              "floor.cpu.big_result", "floor.cpu.big_result_mem"}
    if have("distributed"):
        cases.add("floor.dask")
    if have("uvicorn") and have("httpx") and have("starlette"):
        cases |= {"web.offload_p99", "web.offload_nice_p99"}
    return cases


def positive(x: Any) -> bool:
    return isinstance(x, int | float) and x > 0 and math.isfinite(x)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out), "--img", str(out / "img")],
        cwd=ROOT, capture_output=True, text=True, timeout=140,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc.stdout + proc.stderr


def test_quick_run_has_every_case_with_positive_figures(quick_run: tuple[Path, str]) -> None:
    out, _ = quick_run
    res = json.loads((out / "results.json").read_text())
    machine = res["machine"]
    assert positive(machine["cores"])
    assert machine["python"].count(".") == 2
    assert res["started"] and res["quick"] is True
    cases = {case["id"]: case for case in res["cases"]}
    assert set(cases) >= expected_cases(), sorted(expected_cases() - set(cases))
    for case_id, case in cases.items():
        ours = case["results"][case["ours"]]
        assert positive(ours["median"]), (case_id, ours)
        if case["unit"] == "s":
            for name, row in case["results"].items():
                assert positive(row["median"]), (case_id, name, row)
                assert positive(row["ratio"]), (case_id, name, row)
                assert all(positive(x) for x in row["runs"]), (case_id, name, row)
    # The 0.1.0 targets are all there.
    targets = {(case_id, t["source"]) for case_id, case in cases.items() for t in case["targets"]}
    for case_id in ("io.trivial", "io.sleep10ms", "blocking.trivial", "blocking.sleep5ms",
                    "timeout.io", "io.rss"):
        assert (case_id, "0.1.0 target") in targets, case_id
    cpu_targets = ["cpu.heavy", "cpu.crash"]
    if have("joblib"):  # the yardstick of these two (the bench extra installs it)
        cpu_targets += ["cpu.warm_vs_fresh", "cpu.cold"]
    for case_id in cpu_targets:
        assert (case_id, "0.1.0 target") in targets, case_id
    floor = {case_id for case_id in expected_cases() if case_id.startswith(("floor.", "web."))}
    for case_id in floor - {"floor.cpu.warm_amap"}:  # a reference row, no target
        assert (case_id, "0.2.0 target") in targets, case_id
    assert positive(cases["floor.cpu.big_result_mem"]["results"]["tasklanes"]["median"])
    if "web.offload_p99" in cases:  # the web ratio is the web group's own figures
        modes = res["web"]["modes"]
        ratio = modes['@offload(kind="cpu")']["p99_ms"] / modes["no load"]["p99_ms"]
        assert cases["web.offload_p99"]["targets"][0]["ratio"] == pytest.approx(ratio)
        niced = modes["@offload, cpu_worker_nice=10"]["p99_ms"] / modes["no load"]["p99_ms"]
        assert cases["web.offload_nice_p99"]["targets"][0]["ratio"] == pytest.approx(niced)
    # The crash case: tasklanes delivers every other task.
    assert cases["cpu.crash"]["results"]["tasklanes"]["median"] == 39
    for lane in ("io", "blocking", "cpu"):
        rows = res["scaling"][lane]["tasklanes"]
        assert rows, lane
        assert all(positive(r["per_task_us"]) and positive(r["peak_mb"]) for r in rows), rows
    if have("uvicorn") and have("httpx") and have("starlette"):
        modes = res["web"]["modes"]
        assert set(modes) == {"no load", "inline in the async route", "asyncio.to_thread",
                              '@offload(kind="cpu")', "@offload, cpu_worker_nice=10"}
        assert all(positive(m["median_ms"]) and positive(m["p99_ms"]) for m in modes.values())


def test_quick_run_writes_the_markdown_table_and_plots(quick_run: tuple[Path, str]) -> None:
    out, log = quick_run
    md = (out / "results.md").read_text()
    assert "| case | peer | tasklanes median | peer median | ratio | target | met? |" in md
    assert "Python " in md and "usable cores" in md
    if have("matplotlib"):
        for name in ("scaling_time.png", "scaling_memory.png"):
            assert (out / "img" / name).stat().st_size > 1000, name
    else:
        assert "plots skipped" in log
    assert "Traceback" not in log


def test_start_methods_benchmark_measures_each_method() -> None:
    """benchmarks/bench_start_methods.py (quoted in docs/start-methods.md) still runs."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_start_methods.py"), "--rounds", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["default", "fork", "forkserver", "spawn"]
    for row in rows[1:]:
        figures = [float(m) for m in re.findall(r"(\d+) ms", row)]
        assert len(figures) == 4 and all(f > 0 for f in figures[:3]), row
