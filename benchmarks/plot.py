"""Plots of the benchmark results (matplotlib), for docs/performance.md.

    python benchmarks/plot.py [benchmarks/results/results.json] [--img docs/img]

``benchmarks/run.py`` calls :func:`render` at the end of a run. It writes:

- ``scaling_time.png``: per-task time against the number of tasks, log-log, one panel per
  lane, tasklanes against the best peer of that lane (the fastest at the largest size; the
  other peers measured are drawn thin and grey);
- ``scaling_memory.png``: the peak RSS of the whole process against the number of tasks;
- ``web_latency.png``: the web server's /ping latency (median and p99) per way of running
  the CPU-heavy requests.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OURS = "tasklanes"
LANE_TITLES = {"io": "io lane (trivial coroutines)", "blocking": "blocking lane (trivial calls)",
               "cpu": "cpu lane (trivial tasks)"}


def best_peer(tools: dict[str, list[dict[str, Any]]]) -> str | None:
    """The peer with the lowest per-task time at the largest size both measured."""
    peers = [t for t in tools if t != OURS and tools[t]]
    if not peers:
        return None

    def key(tool: str) -> tuple[float, float]:
        last = max(tools[tool], key=lambda r: r["n"])
        return (-last["n"], last["per_task_us"])

    return min(peers, key=key)


def _minor_label(value: float, _pos: object) -> str:
    """Label the 2s, 3s and 5s between powers of ten (the axis may span less than a decade)."""
    lead = f"{value:.0e}"[0]
    return f"{value:g}" if lead in "235" else ""


def _series(rows: list[dict[str, Any]], field: str) -> tuple[list[int], list[float]]:
    rows = sorted(rows, key=lambda r: r["n"])
    return [r["n"] for r in rows], [r[field] for r in rows]


def render(res: dict[str, Any], img_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    img_dir.mkdir(parents=True, exist_ok=True)
    m = res["machine"]
    subtitle = (f"{m['usable_cores']} cores, Python {m['python']}, {res['started'][:10]}"
                + (" (quick mode: tiny sizes)" if res.get("quick") else ""))
    written: list[Path] = []
    scaling = res.get("scaling") or {}
    lanes = [lane for lane in ("io", "blocking", "cpu") if scaling.get(lane)]
    for field, ylabel, name, title in (
        ("per_task_us", "time per task (µs, log)", "scaling_time.png",
         "Per-task time as the batch grows"),
        ("peak_mb", "peak RSS of the process (MB, log)", "scaling_memory.png",
         "Peak memory as the batch grows"),
    ):
        if not lanes:
            break
        fig, axes = plt.subplots(1, len(lanes), figsize=(4.2 * len(lanes), 3.6), squeeze=False)
        for ax, lane in zip(axes[0], lanes, strict=True):
            tools = scaling[lane]
            peer = best_peer(tools)
            for tool, style in ((OURS, {"color": "C0", "marker": "o", "linewidth": 2.2}),
                                (peer, {"color": "C1", "marker": "s", "linestyle": "--"})):
                if tool and tools.get(tool):
                    xs, ys = _series(tools[tool], field)
                    label = tool if tool == OURS else f"best peer: {tool}"
                    ax.plot(xs, ys, label=label, **style)  # type: ignore[arg-type]
            for i, tool in enumerate(t for t in tools if t not in (OURS, peer)):
                xs, ys = _series(tools[tool], field)
                ax.plot(xs, ys, label=tool, color="0.55", linestyle=":", linewidth=1,
                        marker="x^v+"[i % 4], markersize=4)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
            ax.set_title(LANE_TITLES.get(lane, lane), fontsize=10)
            ax.set_xlabel("tasks in the batch (log)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{title} — {subtitle}", fontsize=10)
        fig.tight_layout()
        path = img_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    web = res.get("web")
    if web and web.get("modes"):
        names = list(web["modes"])
        med = [web["modes"][k]["median_ms"] for k in names]
        p99 = [web["modes"][k]["p99_ms"] for k in names]
        fig, ax = plt.subplots(figsize=(7.5, 3.4))
        ys = range(len(names))
        ax.barh([y + 0.2 for y in ys], p99, height=0.4, color="C1", label="p99")
        ax.barh([y - 0.2 for y in ys], med, height=0.4, color="C0", label="median")
        ax.set_yticks(list(ys), names)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("/ping latency (ms, log)")
        ax.set_title(f"uvicorn: /ping while {web['heavy_clients']} clients request "
                     f"{web['heavy_ms']:.0f} ms of CPU work\n{subtitle}", fontsize=9)
        ax.grid(True, axis="x", which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = img_dir / "web_latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the benchmark plots.")
    parser.add_argument("results", nargs="?", default=str(HERE / "results" / "results.json"))
    parser.add_argument("--img", default=str(HERE.parent / "docs" / "img"))
    args = parser.parse_args(argv)
    res = json.loads(Path(args.results).read_text())
    for path in render(res, Path(args.img)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
