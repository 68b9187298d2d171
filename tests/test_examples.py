"""Every script under examples/ runs, against its own local servers, and succeeds.

Each example starts (and stops) its servers on 127.0.0.1 on free ports, checks its own
results with ``assert`` and prints what it measured. It runs here as a subprocess:
its threads, worker processes and third-party warnings stay out of this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# script -> what its output must contain
EXPECTED = {
    "01_http_httpx.py": ["200 requests", "(limit=20)"],
    "02_http_blocking.py": ["run_all_sync: 100 blocking requests", "(limit=10)"],
    "03_fastapi_offload.py": ["8 blocking lookups", "/health answered", "504"],
    "04_databases.py": ["sqlite3 on 'blocking'", "aiosqlite on 'io'", "same answers"],
    "05_polite_scraping.py": ["46 pages", "'HTTPStatusError': 2", "10 attempts retried"],
    "06_send_mail.py": ["29 mails sent", "SMTPRecipientsRefused"],
    "07_cpu_work.py": ["kind='cpu' (processes)", "kind='cpu' from async"],
    "08_trio.py": ["under trio", "stopped after"],
    "09_dask.py": ["on the Dask cluster (2 worker processes)", "TaskTimeout"],
    "10_production.py": ["GET /metrics:", 'tasklanes_tasks_completed_total{lane="io"} 144.0'],
}


def test_every_example_is_tested() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(EXPECTED)


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example(script: str) -> None:
    env = dict(os.environ)  # tasklanes is installed (editable) in the test environment
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"  # loopback only, no proxy
    env["PYTHONWARNINGS"] = "default"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    for text in EXPECTED[script]:
        assert text in proc.stdout, f"{script}: {text!r} not in its output:\n{proc.stdout}"
