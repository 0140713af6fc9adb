"""``make bench-fanout``: how fast one post reaches every follower's feed, against the raw rate
of pipelined ZADD into the same Redis, measured in the same run.

Uses the machine's PostgreSQL (a fresh database, dropped afterwards), Redis (db 10, flushed)
and RabbitMQ, with the real relay and Dramatiq worker processes. Prints a table and writes
bench/results/fanout.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from flask_migrate import upgrade
from sqlalchemy import create_engine, text

from app import create_app
from feed import commands
from feed.auth import Principal
from feed.config import Settings, sqlalchemy_url
from feed.keys import feed_key
from feed.origin import follow_database
from feed.readmodel import SENTINEL, SENTINEL_SCORE, configure_compact_encoding, score_of
from feed.unit_of_work import UnitOfWork
from sagas.bootstrap import build_services
from workers.queues import delete_queues

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SERVER = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def seed_author(engine, client: redis.Redis, followers: int) -> int:
    """An author and ``followers`` accounts following it, each with a live feed of 20 posts."""
    tag = uuid.uuid4().hex[:6]
    with engine.begin() as conn:
        author = conn.execute(
            text(
                "INSERT INTO accounts (handle, display_name, password_hash) "
                "VALUES (:h, 'Author', 'x') RETURNING id"
            ),
            {"h": f"author_{tag}"},
        ).scalar_one()
        ids = (
            conn.execute(
                text(
                    "INSERT INTO accounts (handle, display_name, password_hash, following_count, "
                    "counts_version) SELECT 'f' || g || '_' || :tag, 'Fan', 'x', 1, 1 "
                    "FROM generate_series(1, :n) g RETURNING id"
                ),
                {"tag": tag, "n": followers},
            )
            .scalars()
            .all()
        )
        conn.execute(
            text("INSERT INTO follows (follower_id, followee_id) SELECT unnest(:ids), :a"),
            {"ids": list(ids), "a": author},
        )
        conn.execute(
            text("UPDATE accounts SET followers_count = :n, counts_version = 1 WHERE id = :a"),
            {"n": followers, "a": author},
        )
    filler = {str((1_000_000 + i) << 22): score_of((1_000_000 + i) << 22) for i in range(20)}
    for start in range(0, len(ids), 5000):
        pipe = client.pipeline(transaction=False)
        for follower in ids[start : start + 5000]:
            pipe.zadd(feed_key(follower), {SENTINEL: SENTINEL_SCORE, **filler})
        pipe.execute()
    return author


def raw_zadd_rate(client: Any, keys: list[str], member: str, score: int) -> float:
    """Pipelined ZADD of one member into every key, in chunks of 1000: inserts per second. On
    a cluster each chunk is split by node, each part one plain pipeline to its primary (not
    redis-py's cluster pipeline, whose per-command bookkeeping would be the bottleneck)."""
    started = time.perf_counter()
    for start in range(0, len(keys), 1000):
        for node, part in _by_node(client, keys[start : start + 1000]):
            pipe = node.pipeline(transaction=False)
            for key in part:
                pipe.zadd(key, {member: score})
            pipe.execute()
    elapsed = time.perf_counter() - started
    for node, part in _by_node(client, keys):
        pipe = node.pipeline(transaction=False)
        for key in part:
            pipe.zrem(key, member)
        pipe.execute()
    return len(keys) / elapsed


def _by_node(client: Any, keys: list[str]) -> list[tuple[redis.Redis, list[str]]]:
    """``keys`` grouped by the node that holds them, with a plain client for each node."""
    if not isinstance(client, redis.RedisCluster):
        return [(client, keys)]
    groups: dict[str, list[str]] = {}
    for key in keys:
        node = client.nodes_manager.get_node_from_slot(client.keyslot(key))
        groups.setdefault(node.name, []).append(key)
    return [
        (client.get_redis_connection(client.get_node(node_name=n)), g) for n, g in groups.items()
    ]


def fan_out_seconds(
    services, author: int, log_path: Path, pages: int, since: int
) -> tuple[float, str]:
    """Publish one post and wait for the workers to log its last fan-out page."""
    with UnitOfWork(services.engine) as uow:
        post = commands.publish_post(uow, commands.PublishPost(Principal(author, False), "bench"))
        uow.commit()
    committed = time.time()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = log_path.read_text().splitlines()[since:]
        done = [json.loads(line) for line in lines if '"fan_out_page"' in line]
        if len(done) >= pages:
            last = max(datetime.fromisoformat(d["timestamp"]).timestamp() for d in done)
            return last - committed, str(post["id"])
        time.sleep(0.05)
    raise RuntimeError("the fan-out did not finish within 120 s")


def bytes_per_feed_entry(client: redis.Redis) -> dict[str, float]:
    """MEMORY USAGE of an 800-entry feed of 64-bit ids, compact and with Redis's defaults."""
    results = {}
    for name, entries in (("compact", 1024), ("redis_default", 128)):
        for option in ("zset-max-listpack-entries", "zset-max-ziplist-entries"):
            try:
                client.config_set(option, entries)
                break
            except redis.ResponseError:
                continue
        key = f"bench:feed:{name}"
        client.delete(key)
        base = 119_470_000_000_000_000
        client.zadd(
            key, {str(base + i * 4_194_304): score_of(base + i * 4_194_304) for i in range(800)}
        )
        results[name] = client.memory_usage(key, samples=0) / 800
        client.delete(key)
    configure_compact_encoding(client)
    return results


def measure(sizes: list[int], repeat: int, cluster_nodes: tuple[str, ...] = ()) -> dict:
    """Fan-out against raw pipelined ZADD for each size, on the Redis of ``REDIS_URL`` or, with
    ``cluster_nodes``, on that Redis Cluster (raw ZADD through redis-py's cluster pipeline,
    spread over the same nodes); the report ``fanout.json`` holds."""
    name = f"feed_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(sqlalchemy_url(SERVER), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    database_url = SERVER.rpartition("/")[0] + "/" + name
    redis_env = (
        {"REDIS_URL": "", "REDIS_CLUSTER_NODES": ",".join(cluster_nodes)}
        if cluster_nodes
        else {"REDIS_URL": REDIS_URL}
    )
    settings = Settings(
        database_url=database_url,
        redis_url=None if cluster_nodes else REDIS_URL,
        redis_cluster_nodes=cluster_nodes,
        broker_url=BROKER_URL,
        secret_key="bench-secret-key-not-for-production",
        feed_pull_threshold=10**9,
        log_json=True,
    )
    services = build_services(settings)
    app = create_app(services=services)
    with app.app_context():
        upgrade()
    client = services.redis
    client.flushdb(asynchronous=True)
    configure_compact_encoding(client)
    # Record which database this read model follows before seeding feeds by hand: else the
    # workers would take them for another database's and clear them (feed/origin.py).
    follow_database(services.store)
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / "fanout-workers.log"
    log_path.write_text("")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        **redis_env,
        "BROKER_URL": BROKER_URL,
        "SECRET_KEY": "bench-secret-key-not-for-production",
        "LOG_JSON": "true",
        "FEED_PULL_THRESHOLD": str(10**9),
        "FEED_QUEUE_PREFIX": f"bench-{name}-",
    }
    workers = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "workers.actors", "--processes", "2", "--threads", "4"],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("a"),
        stderr=subprocess.STDOUT,
    )
    relay = subprocess.Popen(
        [sys.executable, "-m", "workers.relay"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs = []
    try:
        time.sleep(3)
        for size in sizes:
            author = seed_author(services.engine, client, size)
            keys = [feed_key(f) for f in _followers(services.engine, author)]
            # the same insert a fan-out makes: a post newer than every post in the feeds
            newest = 2_000_000 << 22
            raw = statistics.median(
                raw_zadd_rate(client, keys, str(newest), score_of(newest)) for _ in range(repeat)
            )
            pages = -(-size // settings.fanout_page_size)
            # warm-up: connections, functions loaded, pages of this size
            fan_out_seconds(
                services, author, log_path, pages, len(log_path.read_text().splitlines())
            )
            times = []
            for _ in range(repeat):
                since = len(log_path.read_text().splitlines())
                seconds, post_id = fan_out_seconds(services, author, log_path, pages, since)
                missing = _missing(client, keys, post_id)
                if missing:
                    raise RuntimeError(f"{missing} feeds lack post {post_id}")
                times.append(seconds)
            seconds = statistics.median(times)
            runs.append(
                {
                    "followers": size,
                    "seconds": round(seconds, 3),
                    "inserts_per_s": round(size / seconds),
                    "raw_zadd_per_s": round(raw),
                    "ratio_to_raw": round(size / seconds / raw, 3),
                    "all_runs_s": [round(t, 3) for t in times],
                }
            )
    finally:
        workers.terminate()
        relay.terminate()
        workers.wait(30)
        relay.wait(30)
    report = {
        "raw_zadd_per_s": statistics.median(r["raw_zadd_per_s"] for r in runs),
        "runs": runs,
        "redis": f"cluster of {len(cluster_nodes)} primaries" if cluster_nodes else "one node",
        "load_generator": "in-process command; relay + 2x4 Dramatiq workers over RabbitMQ",
    }
    if not cluster_nodes:  # CONFIG SET and MEMORY USAGE of one node
        memory = bytes_per_feed_entry(client)
        report["redis_bytes_per_feed_entry"] = round(memory["compact"], 1)
        report["redis_bytes_per_feed_entry_default_encoding"] = round(memory["redis_default"], 1)
    client.flushdb(asynchronous=True)
    services.close()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    delete_queues(BROKER_URL, env["FEED_QUEUE_PREFIX"])
    return report


def print_table(report: dict) -> None:
    header = ("followers", "seconds (median)", "inserts/s", "raw ZADD/s", "ratio")
    print(f"\nfan-out on {report['redis']}")
    print("{:>10} {:>17} {:>11} {:>11} {:>6}".format(*header))
    for r in report["runs"]:
        print(
            f"{r['followers']:>10} {r['seconds']:>17.3f} {r['inserts_per_s']:>11} "
            f"{r['raw_zadd_per_s']:>11} {r['ratio_to_raw']:>6.2f}"
        )
    if "redis_bytes_per_feed_entry" in report:
        print(
            "\nRedis bytes per feed entry (800-entry feed, MEMORY USAGE): "
            f"{report['redis_bytes_per_feed_entry']:.1f} compact, "
            f"{report['redis_bytes_per_feed_entry_default_encoding']:.1f} with Redis's default "
            "encoding"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    report = measure([int(s) for s in args.sizes.split(",")], args.repeat)
    (RESULTS / "fanout.json").write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"wrote {RESULTS / 'fanout.json'}")
    return 0


def _followers(engine, author: int) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT follower_id FROM follows WHERE followee_id = :a"), {"a": author}
            ).scalars()
        )


def _missing(client: redis.Redis, keys: list[str], post_id: str) -> int:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.zscore(key, post_id)
    return sum(score is None for score in pipe.execute())


if __name__ == "__main__":
    sys.exit(main())
