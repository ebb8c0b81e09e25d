"""Worker processes of one server: each serves its own metrics on a Unix socket in the supervisor's
directory, and whichever worker the kernel hands a /metrics request merges every worker's figures, so a
scraper sees one server whatever worker answers (counters, gauges and histogram buckets all add up)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
from aiohttp import web

SELF_PATH = "/self/metrics"


def socket_path(worker_dir: str, index: int) -> str:
    return str(Path(worker_dir) / f"worker-{index}.sock")


async def serve_self(app_metrics: web.Application, worker_dir: str, index: int) -> web.AppRunner:
    """This worker's own figures on its Unix socket (the directory is the supervisor's, mode 0700)."""
    path = socket_path(worker_dir, index)
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()  # a dead predecessor's socket
    runner = web.AppRunner(app_metrics, handle_signals=False, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    return runner


async def _fetch(path: str) -> str | None:
    try:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session, \
                session.get(f"http://worker{SELF_PATH}", timeout=timeout) as r:
            return await r.text() if r.status == 200 else None
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None  # a worker being restarted: its figures are back on the next scrape


async def sibling_metrics(worker_dir: str, index: int) -> list[str]:
    """Every other live worker's own metrics text."""
    paths = sorted(str(p) for p in Path(worker_dir).glob("worker-*.sock") if p.name != f"worker-{index}.sock")
    return [t for t in await asyncio.gather(*(_fetch(p) for p in paths)) if t is not None]


def merge(texts: list[str]) -> str:
    """Sum Prometheus text expositions sample by sample (a summary's quantiles: the largest); comments kept
    once per family, first-seen order."""
    families: dict[str, list[str]] = {}  # family -> its # HELP / # TYPE lines
    samples: dict[str, dict[str, float]] = {}  # family -> series (name + labels) -> summed value
    for text in texts:
        family = ""
        for line in text.splitlines():
            if line.startswith("#"):
                parts = line.split(maxsplit=3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    if line not in families.setdefault(family, []):
                        families[family].append(line)
                continue
            if not line.strip():
                continue
            series, _, value = line.rpartition(" ")
            bucket = samples.setdefault(family, {})
            if f"# TYPE {family} summary" in families.get(family, ()):  # quantiles (loop lag): the worst worker
                bucket[series] = max(bucket.get(series, float("-inf")), float(value))
            else:
                bucket[series] = bucket.get(series, 0.0) + float(value)
    out = []
    for family in dict.fromkeys([*families, *samples]):
        out.extend(families.get(family, []))
        out.extend(f"{series} {_num(v)}" for series, v in samples.get(family, {}).items())
    return "\n".join(out) + "\n"


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) else repr(v)
