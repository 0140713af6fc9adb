"""What every phase of ``make bench`` stands on: the seeded servers, the service started as
production runs it, wrk (a separate C process) and the statistics of interleaved rounds."""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import requests
from sqlalchemy import create_engine, text

from bench.seed import DEFAULT_DATABASE, DEFAULT_REDIS
from feed.config import Settings, sqlalchemy_url
from feed.keys import feed_key
from workers.broker import QUEUES, queue_name

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"

WRK_SCRIPT = ROOT / "bench" / "wrk" / "requests.lua"

PERFORMANCE_DOC = ROOT / "docs" / "performance.md"

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE)

REDIS_URL = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS)

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

QUEUE_PREFIX = "bench-"

HOME = "/api/v1/timelines/home?limit=20"


def use_bench_servers(**extra: str) -> None:
    """Point this process's settings at the bench's servers and data (for in-process tools)."""
    os.environ.update(
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        BROKER_URL=BROKER_URL,
        SECRET_KEY="profile-secret-key-not-for-production",
        LOG_JSON="true",
        **extra,
    )


def ensure_seeded(seed_args: list[str]) -> None:
    """Run ``bench.seed`` when the bench database or its credentials file is missing, or only
    its read-model phase when Redis has lost them."""
    credentials = RESULTS / "credentials.csv"
    seeded = False
    try:
        engine = create_engine(sqlalchemy_url(DATABASE_URL))
        with engine.connect() as conn:
            seeded = conn.execute(text("SELECT count(*) FROM accounts")).scalar_one() > 0
        engine.dispose()
    except Exception:  # no database yet, or no tables
        seeded = False
    env = {**os.environ, "DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL}
    sample: list[str] = []
    if credentials.exists():
        with credentials.open() as source:
            sample = [row["id"] for row in csv.DictReader(source)]
    if seeded and sample:  # without the sample's credentials, seed again
        client = redis.Redis.from_url(REDIS_URL)
        try:
            if client.exists(feed_key(sample[0])):
                return
        finally:
            client.close()
        # Redis keeps nothing on disk here: after a restart the feeds are gone, the database not.
        print("no read models in Redis: rebuilding them from the seeded database", flush=True)
        command = [sys.executable, "-m", "bench.seed", "--read-models-only"]
        command += ["--sample", str(len(sample))]
        subprocess.run(command, cwd=ROOT, env=env, check=True)
        return
    print("no seed data: running bench.seed first", flush=True)
    subprocess.run([sys.executable, "-m", "bench.seed", *seed_args], cwd=ROOT, env=env, check=True)


@contextmanager
def service(port: int, log_path: Path, **extra_env: str) -> Iterator[str]:
    """``feed.launcher`` (gunicorn + relay + workers) on the bench data, with ``extra_env``
    over the bench's settings; yields its base URL."""
    env = {
        **os.environ,
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "BROKER_URL": BROKER_URL,
        "SECRET_KEY": "bench-secret-key-not-for-production",
        "PORT": str(port),
        "RATE_LIMITS_ENABLED": "false",
        "BENCH_BASELINE": "true",
        "FEED_QUEUE_PREFIX": QUEUE_PREFIX,
        "LOG_JSON": "true",
        **extra_env,
    }
    base = f"http://127.0.0.1:{port}"
    for taken in filter(None, (port, int(env.get("EDGE_PORT") or 0))):
        try:
            requests.get(f"http://127.0.0.1:{taken}/readyz", timeout=2)
        except requests.RequestException:  # nothing there: the port is free for this service
            pass
        else:  # else the readiness check below would pass on that one, and it would be measured
            raise RuntimeError(f"something already answers on port {taken}; stop it first")
    with log_path.open("w") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "feed.launcher"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if launcher.poll() is not None:
                raise RuntimeError(f"the service exited; see {log_path}")
            try:
                if requests.get(base + "/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still starting
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service was not ready within 60 s; see {log_path}")
            time.sleep(0.5)
        yield base
    finally:
        launcher.terminate()
        try:
            launcher.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, 9)
            launcher.wait()


def log_in(base: str, accounts: list[dict[str, str]]) -> list[str]:
    """Bearer tokens of ``accounts`` (Argon2id is slow on purpose: a few at a time, and a
    login refused while the service's hashing slots are busy is tried again after its
    Retry-After, as a client should)."""

    def one(account: dict[str, str]) -> str:
        while True:
            response = requests.post(
                base + "/api/v1/sessions",
                json={"handle": account["handle"], "password": account["password"]},
                timeout=30,
            )
            if response.status_code != 503:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")) * 0.1)
        response.raise_for_status()
        return response.json()["token"]

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, accounts))


def wait_until_drained(engine, client: redis.Redis, timeout: float = 300) -> float:
    """Wait until the outbox is published and the bench queues are empty; seconds waited."""
    import pika

    started = time.monotonic()
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    channel = connection.channel()
    settings = Settings(broker_url=BROKER_URL, queue_prefix=QUEUE_PREFIX)
    queues = [queue_name(settings, name) for name in QUEUES]
    try:
        quiet = 0
        while time.monotonic() - started < timeout:
            with engine.connect() as conn:
                unpublished = conn.execute(
                    text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                ).scalar_one()
            queued = 0
            for queue in queues:
                try:
                    queued += channel.queue_declare(queue, passive=True).method.message_count
                except pika.exceptions.ChannelClosedByBroker:
                    channel = connection.channel()
            # message_count leaves out unacknowledged messages: ask for quiet twice in a row.
            quiet = quiet + 1 if unpublished == 0 and queued == 0 else 0
            if quiet >= 3:
                return time.monotonic() - started
            time.sleep(0.5)
        raise RuntimeError("the pipeline did not drain")
    finally:
        connection.close()


def wrk(
    base: str, method: str, path: str, tokens_file: Path | None, seconds: int, connections: int
) -> dict[str, Any]:
    """One wrk run (1 thread): requests/s, latency percentiles in ms, non-2xx count."""
    command = [
        shutil.which("wrk") or "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(WRK_SCRIPT),
        base,
        "--",
        method,
        path,
        str(tokens_file) if tokens_file else "-",
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(x for x in output.splitlines() if x.startswith("BENCH_JSON "))
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(
        raw[k] for k in ("non_2xx", "connect_errors", "read_errors", "write_errors", "timeouts")
    )
    seconds_run = raw["duration_us"] / 1e6
    percentiles = {p: us / 1000 for p, us in raw["percentiles_us"]}
    return {
        "requests": raw["requests"],
        "errors": errors,
        "rps": (raw["requests"] - errors) / seconds_run,
        "p50_ms": percentiles[50],
        "p99_ms": percentiles[99],
        "percentiles_ms": percentiles,
        "bytes_per_response": raw["bytes"] / max(1, raw["requests"]),
    }


class ConnectionSplit:
    """How wrk's connections are spread over gunicorn's workers during a round ("9/7"): read
    with ``ss`` one second into the round. Each worker accepts from the shared socket when it is
    free, so the split is luck, and a worker holding more of the connections serves each less
    often: a lopsided split (14/2) tripled a round's p99, though even rounds have a tail of their
    own (docs/performance.md). None without ``ss``."""

    def __init__(self, port: int, after_s: float = 1.0) -> None:
        self._port = port
        self._split: str | None = None
        self._timer = threading.Timer(after_s, self._sample)
        self._timer.start()

    def _sample(self) -> None:
        try:
            listing = subprocess.run(
                ["ss", "-tnpH", "state", "established", f"( sport = :{self._port} )"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return
        per_pid = collections.Counter(re.findall(r"pid=(\d+)", listing))
        if per_pid:
            self._split = "/".join(str(n) for n in sorted(per_pid.values(), reverse=True))

    def result(self) -> str | None:
        self._timer.join()
        return self._split


def ensure_wrk() -> None:
    """wrk, and HAProxy for the edge (phase 7): Debian's packages, installed when missing."""
    for command in ("wrk", "haproxy"):
        if shutil.which(command):
            continue
        if os.geteuid() == 0 and shutil.which("apt-get"):
            print(f"installing {command} (Debian package)", flush=True)
            subprocess.run(["apt-get", "install", "-y", "-q", command], check=True)
        if not shutil.which(command):
            raise SystemExit(f"make bench needs {command}: apt-get install {command}")


# wrk2 (open-loop: requests leave on a schedule, latency counted from it) is not packaged:
# built from this commit of its source, or from WRK2_SOURCE (a clone, or a git URL).
WRK2_REPOSITORY = "https://github.com/giltene/wrk2"
WRK2_COMMIT = "44a94c17d8e6a0bac8559b53da76848e430cb7a7"


def ensure_wrk2() -> str:
    """The wrk2 binary: ``WRK2`` if set, else built once into bench/results/wrk2-build."""
    if os.environ.get("WRK2"):
        return os.environ["WRK2"]
    build = RESULTS / "wrk2-build"
    binary = build / "wrk"
    if binary.exists():
        return str(binary)
    source = os.environ.get("WRK2_SOURCE", WRK2_REPOSITORY)
    print(f"building wrk2 {WRK2_COMMIT[:10]} from {source}", flush=True)
    shutil.rmtree(build, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", source, str(build)], check=True)
    subprocess.run(["git", "-C", str(build), "checkout", "-q", WRK2_COMMIT], check=True)
    subprocess.run(["make", "-j2"], cwd=build, check=True, capture_output=True)
    return str(binary)


def summarise(prefix: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        f"{prefix}_rps": round(statistics.median(r["rps"] for r in runs), 1),
        f"{prefix}_p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 2),
        f"{prefix}_p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 2),
        f"{prefix}_rounds_rps": [round(r["rps"], 1) for r in runs],
    }


def paired_ratio(rounds: list[float], baselines: list[float]) -> float:
    return round(statistics.median(r / b for r, b in zip(rounds, baselines, strict=False)), 3)


def median_curve(runs: list[dict[str, Any]]) -> dict[float, float]:
    return {
        p: statistics.median(r["percentiles_ms"][p] for r in runs)
        for p in runs[0]["percentiles_ms"]
    }


def fail_on_errors(what: str, runs: list[dict[str, Any]]) -> None:
    errors = sum(r["errors"] for r in runs)
    if errors:
        raise RuntimeError(f"{what}: {errors} requests failed (non-2xx or socket errors)")


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(p * 10) - 1]


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass
class Run:
    """What the phases of one ``make bench`` share (the service, its data, the logged-in
    accounts' tokens, the baseline's path) and what they add to (the report, the curves)."""

    args: argparse.Namespace
    base: str
    engine: Any
    client: redis.Redis
    tokens_file: Path
    constant: str
    report: dict[str, Any]
    curves: dict[str, dict[float, float]]
