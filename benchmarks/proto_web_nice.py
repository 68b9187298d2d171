"""Issue 14, web case: does lowering the cpu workers' priority keep /ping's tail short?

    python benchmarks/proto_web_nice.py [--rounds 3] [--probes 100]   (BENCH_NICE=5: another niceness)

Same server and load as ``run.py``'s web group (uvicorn + Starlette, 4 clients looping
on a 50 ms CPU route), alternating: no load, ``@offload(kind="cpu")``, and the same
offloaded function in workers that called ``os.nice(10)`` once (``/offload_nice`` in
``bench_webapp.py``). With two busy workers on two cores, the server's event loop
competes with them for the CPU; a nicer worker yields to it. Prototype only: the
pool lowers its workers' priority only when asked (`Scheduler(cpu_worker_nice=...)`). A fourth mode runs the same function on a
``Scheduler(cpu_limit=cores - 1)``: one core left to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as R  # noqa: E402  (puts src/ on the path for the server too)

#: The niceness of the niced route's workers (``BENCH_NICE``, read by ``bench_webapp``).
NICE = int(os.environ.get("BENCH_NICE", "10"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--probes", type=int, default=100)
    args = parser.parse_args()
    import httpx

    burn_n = R.B.calibrate(0.05)
    port = R.free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [R.PY, "-m", "uvicorn", "bench_webapp:app", "--host", "127.0.0.1", "--port",
         str(port), "--log-level", "warning", "--app-dir", str(HERE)],
        cwd=str(HERE), env=dict(os.environ, BENCH_BURN_N=str(burn_n)),
    )
    modes = {"no load": None, '@offload(kind="cpu")': "offload",
             f"@offload, workers niced (+{NICE})": "offload_nice",
             "@offload, cpu_limit=cores-1": "offload_spare"}
    lat: dict[str, list[float]] = {k: [] for k in modes}
    heavy: dict[str, float] = dict.fromkeys(modes, 0.0)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.1)
        for mode in modes.values():
            if mode:
                httpx.get(f"{base}/{mode}", timeout=60).raise_for_status()
        for _ in range(args.rounds):
            for name, mode in modes.items():
                r = asyncio.run(R.web_measure(base, mode, args.probes, 4, 0.005, 0.3))
                lat[name] += r["latencies"]
                heavy[name] += r["heavy_done"] / r["seconds"] / args.rounds
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    idle = R.percentile(lat["no load"], 99)
    print(f"/ping over {args.rounds} x {args.probes} probes per mode:")
    for name in modes:
        p99 = R.percentile(lat[name], 99)
        print(f"  {name:<32} median {R.median(lat[name]) * 1e3:7.2f} ms  p99 {p99 * 1e3:7.2f} ms"
              f"  p99 / no load {p99 / idle:5.2f}  heavy {heavy[name]:5.1f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
