"""Database queries: a sync driver (sqlite3) on "blocking", an async one (aiosqlite) on "io".

Whatever the driver, a database serves only so many queries at once (its pool, its
connection limit, its disks). ``limit=`` is what protects it: 200 queries are
queued, at most 4 run at a time. A sync driver's call waits holding its thread, so it
goes on the blocking lane; an async driver's coroutine goes on the io lane.

Run: python examples/04_databases.py
"""

from __future__ import annotations

import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import aiosqlite
import anyio

from tasklanes import call, run_all

LIMIT = 4
in_flight = 0
peak = 0
lock = threading.Lock()


def track(delta: int) -> None:
    global in_flight, peak
    with lock:
        in_flight += delta
        peak = max(peak, in_flight)


def create(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER, total REAL)")
        db.executemany(
            "INSERT INTO orders (customer, total) VALUES (?, ?)",
            [(i % 50, float(i % 97)) for i in range(5000)],
        )


# -- sqlite3, a sync driver: blocking lane --------------------------------------------


def customer_total(path: Path, customer: int) -> float:
    """One query with the standard library's sync driver (a connection per call:
    sqlite3 connections belong to the thread that made them)."""
    track(+1)
    try:
        db = sqlite3.connect(path)
        try:
            time.sleep(0.01)  # a real server's latency
            row = db.execute(
                "SELECT SUM(total) FROM orders WHERE customer = ?", (customer,)
            ).fetchone()
            return float(row[0])
        finally:
            db.close()
    finally:
        track(-1)


# -- aiosqlite, an async driver: io lane -----------------------------------------------


async def customer_total_async(path: Path, customer: int) -> float:
    track(+1)
    try:
        async with aiosqlite.connect(path) as db:
            await anyio.sleep(0.01)
            async with db.execute(
                "SELECT SUM(total) FROM orders WHERE customer = ?", (customer,)
            ) as cursor:
                row = await cursor.fetchone()
            assert row is not None
            return float(row[0])
    finally:
        track(-1)


async def main(path: Path) -> None:
    global peak
    customers = [i % 50 for i in range(200)]

    start = time.perf_counter()
    sync_totals = await run_all(
        [call(customer_total, path, c) for c in customers], kind="blocking", limit=LIMIT, timeout=5
    )
    took = time.perf_counter() - start
    assert peak <= LIMIT, peak
    print(f"sqlite3 on 'blocking': {len(sync_totals)} queries in {took:.2f} s, "
          f"at most {peak} at once (limit={LIMIT})")

    peak = 0
    start = time.perf_counter()
    async_totals = await run_all(
        [call(customer_total_async, path, c) for c in customers], kind="io", limit=LIMIT, timeout=5
    )
    took = time.perf_counter() - start
    assert peak <= LIMIT, peak
    assert async_totals == sync_totals
    print(f"aiosqlite on 'io': {len(async_totals)} queries in {took:.2f} s, "
          f"at most {peak} at once (limit={LIMIT}); same answers")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "shop.db"
        create(db_path)
        anyio.run(main, db_path)
