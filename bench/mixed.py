"""The Locust mix and what it leaves behind: projection lag from the ``/metrics`` histogram,
and Redis bytes per feed entry."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import requests

from bench.harness import RESULTS, ROOT, Run, rounded, wait_until_drained
from feed.keys import FEED_PREFIX


def histogram(base: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of a histogram on /metrics, summed over its labels."""
    buckets: dict[float, float] = {}
    for line in requests.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "_bucket{"):
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="')[1].split('"')[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(value)
    return buckets


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """``histogram_quantile`` over the observations between two scrapes (linear in a bucket)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0
    if total <= 0:
        return None
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            share = (rank - previous_count) / max(count - previous_count, 1e-9)
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, count
    return previous_bound


def bytes_per_feed_entry(client: redis.Redis, sample: int = 200) -> dict[str, float]:
    """MEMORY USAGE over ZCARD of seeded home feeds (keys and their overhead included)."""
    used = entries = feeds = 0
    for key in client.scan_iter(match=f"{FEED_PREFIX}*", count=1000):
        size = client.zcard(key)
        if size < 100:
            continue
        used += client.memory_usage(key, samples=0) or 0
        entries += size
        feeds += 1
        if feeds >= sample:
            break
    return {
        "bytes_per_entry": used / entries if entries else float("nan"),
        "feeds": feeds,
        "mean_entries": entries / feeds if feeds else 0,
    }


def logins(base: str) -> float:
    """Successful logins the service has answered so far (from /metrics)."""
    total = 0.0
    for line in requests.get(base + "/metrics", timeout=10).text.splitlines():
        login = "/api/v1/sessions" in line and 'status="200"' in line
        if line.startswith("feed_http_requests_total{") and login:
            total += float(line.rsplit(" ", 1)[1])
    return total


def locust_run(
    base: str, users: int, seconds: int, while_running: Callable[[], None]
) -> dict[str, Any]:
    """Locust's ``FeedUser`` mix, headless, as a separate process; ``while_running`` is called
    once it has started. Returns its statistics per request type."""
    prefix = RESULTS / "bench-locust"
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "locust"),
            "-f",
            str(ROOT / "bench" / "locustfile.py"),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            f"{seconds}s",
            "--host",
            base,
            "--csv",
            str(prefix),
            "--only-summary",
            "FeedUser",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LOAD_MAX_P99_MS": "100000"},
    )
    while_running()
    stdout, stderr = process.communicate(timeout=seconds + 120)
    stats = {}
    with open(f"{prefix}_stats.csv") as source:
        for row in csv.DictReader(source):
            stats[row["Name"]] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": round(float(row["Requests/s"]), 1),
                "p50_ms": float(row["50%"] or 0),
                "p99_ms": float(row["99%"] or 0),
            }
    if process.returncode != 0:
        raise RuntimeError(f"locust failed:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return stats


def mixed_load(run: Run) -> None:
    """The Locust mix: projection lag from /metrics; then Redis bytes per feed entry."""
    print(
        f"phase 4: Locust mix, {run.args.locust_users} users for {run.args.locust_seconds} s",
        flush=True,
    )
    # Two windows: the whole run, and the steady mix once every user has logged in (50
    # Argon2 logins at once hold both cores for seconds; that is a ramp-up, not the mix).
    lag = "feed_projection_lag_seconds"
    at_start = histogram(run.base, lag)
    logins_before = logins(run.base)
    snapshots: dict[str, dict[float, float]] = {}

    def once_logged_in() -> None:
        deadline = time.monotonic() + run.args.locust_seconds / 2
        while logins(run.base) < logins_before + run.args.locust_users:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        snapshots["steady"] = histogram(run.base, lag)

    locust = locust_run(run.base, run.args.locust_users, run.args.locust_seconds, once_logged_in)
    wait_until_drained(run.engine, run.client)
    after = histogram(run.base, lag)
    steady = snapshots["steady"]
    run.report.update(
        projection_lag_p50_s=rounded(quantile(0.5, steady, after)),
        projection_lag_p99_s=rounded(quantile(0.99, steady, after)),
        projection_lag_events=int(after.get(float("inf"), 0) - steady.get(float("inf"), 0)),
        projection_lag_p99_s_with_logins=rounded(quantile(0.99, at_start, after)),
        locust=locust,
    )

    memory = bytes_per_feed_entry(run.client)
    run.report["redis_bytes_per_feed_entry"] = round(memory["bytes_per_entry"], 1)
    run.report["redis_feeds_measured"] = memory["feeds"]
    run.report["redis_mean_feed_entries"] = round(memory["mean_entries"])
