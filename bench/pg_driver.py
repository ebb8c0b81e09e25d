"""Which PostgreSQL driver for the event log: psycopg 3 (+ psycopg_pool) or asyncpg, measured on our writes.

The two operations the log does: a turn's flush (one transaction inserting ~20 event rows of ~150 bytes,
the shape bench/log_store.py measures) and a whole call's load (2,000 rows in seq order). Medians of one run.

    pip install asyncpg  # psycopg is a dependency already
    python bench/pg_driver.py [--db postgresql://127.0.0.1/test] [--flushes 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

DDL = """DROP TABLE IF EXISTS bench_events;
CREATE TABLE bench_events (call_id text, seq integer, t_ms integer, kind text, type text, data text,
                           cause integer, PRIMARY KEY (call_id, seq))"""
INSERT = "INSERT INTO bench_events (call_id, seq, t_ms, kind, type, data, cause) VALUES ($1,$2,$3,$4,$5,$6,$7)"
DATA = '{"text":"' + "x" * 120 + '","is_final":true}'
BATCH = 20


def rows(call: str, start: int, n: int) -> list[tuple]:
    return [(call, s, s * 10, "input", "Transcript", DATA, None) for s in range(start, start + n)]


def psycopg_run(dsn: str, flushes: int) -> tuple[list[float], list[float]]:
    import psycopg
    from psycopg_pool import ConnectionPool

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(DDL)
    pool = ConnectionPool(dsn, min_size=1, max_size=2, open=True)
    sql = INSERT.replace("$1", "%s").replace("$2", "%s").replace("$3", "%s").replace("$4", "%s") \
        .replace("$5", "%s").replace("$6", "%s").replace("$7", "%s")
    flush_us = []
    for i in range(flushes):
        t = time.perf_counter()
        with pool.connection() as conn, conn.cursor() as cur:
            cur.executemany(sql, rows("p", 1 + i * BATCH, BATCH))
        flush_us.append((time.perf_counter() - t) * 1e6)
    load_us = []
    for _ in range(20):
        t = time.perf_counter()
        with pool.connection() as conn:
            conn.execute("SELECT seq, t_ms, kind, type, data, cause FROM bench_events WHERE call_id = 'p' "
                         "ORDER BY seq LIMIT 2000").fetchall()
        load_us.append((time.perf_counter() - t) * 1e6)
    pool.close()
    return flush_us, load_us


async def asyncpg_run(dsn: str, flushes: int) -> tuple[list[float], list[float]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    await conn.execute(DDL)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    flush_us = []
    for i in range(flushes):
        t = time.perf_counter()
        async with pool.acquire() as c, c.transaction():
            await c.executemany(INSERT, rows("a", 1 + i * BATCH, BATCH))
        flush_us.append((time.perf_counter() - t) * 1e6)
    load_us = []
    for _ in range(20):
        t = time.perf_counter()
        async with pool.acquire() as c:
            await c.fetch("SELECT seq, t_ms, kind, type, data, cause FROM bench_events WHERE call_id = 'a' "
                          "ORDER BY seq LIMIT 2000")
        load_us.append((time.perf_counter() - t) * 1e6)
    await pool.close()
    await conn.execute("DROP TABLE bench_events")
    await conn.close()
    return flush_us, load_us


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="postgresql://127.0.0.1/test")
    ap.add_argument("--flushes", type=int, default=500)
    a = ap.parse_args()
    for name, (f, ld) in (("psycopg 3 + pool", psycopg_run(a.db, a.flushes)),
                          ("asyncpg + pool", asyncio.run(asyncpg_run(a.db, a.flushes)))):
        print(f"{name:18s} flush of {BATCH} rows: median {statistics.median(f):7.0f} us "
              f"({BATCH / statistics.median(f) * 1e6:7.0f} events/s)  load of 2000 rows: "
              f"median {statistics.median(ld) / 1000:6.1f} ms")


if __name__ == "__main__":
    main()
