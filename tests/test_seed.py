"""``make seed`` (bench.seed) at a small size: the database it loads, and read models built by
several processes that are the same as one process builds."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from feed.config import sqlalchemy_url
from feed.keys import CELEBS_KEY, FEED_PREFIX, feed_key, post_key
from tests.conftest import REDIS_URL, SERVER_URL, _database_url

ROOT = Path(__file__).resolve().parent.parent
SIZE = ["--accounts", "300", "--posts", "3000", "--sample", "20"]


def _redis_db(number: int) -> str:
    base, _, _ = REDIS_URL.rpartition("/")
    return f"{base}/{number}"


def _seed(database_url: str, redis_url: str, *args: str) -> str:
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    result = subprocess.run(
        [sys.executable, "-m", "bench.seed", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _contents(client: redis.Redis) -> dict[bytes, object]:
    """Every key's value, whatever its type (lifetimes, and the pull set's version, which is
    new at every rebuild, left out)."""
    read = {
        b"hash": client.hgetall,
        b"zset": lambda key: client.zrange(key, 0, -1, withscores=True),
        b"set": client.smembers,
        b"string": client.get,
        b"list": lambda key: client.lrange(key, 0, -1),
    }
    contents = {key: read[client.type(key)](key) for key in client.scan_iter(count=1000)}
    contents.get(CELEBS_KEY.encode(), {}).pop(b"_version", None)
    return contents


@pytest.fixture
def seed_database():
    name = f"feed_seed_{uuid.uuid4().hex[:10]}"
    url = _database_url(name)
    clients = [redis.Redis.from_url(_redis_db(n)) for n in (13, 14)]
    yield url, clients
    for client in clients:
        client.flushdb()
        client.close()
    admin = create_engine(sqlalchemy_url(SERVER_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_a_small_seed_loads_the_graph_and_builds_the_same_read_models_in_two_processes(
    seed_database, tmp_path
):
    url, (split, single) = seed_database
    credentials = tmp_path / "credentials.csv"
    output = _seed(url, _redis_db(13), *SIZE, "--jobs", "2", "--credentials", str(credentials))
    for phase in ("accounts", "follows", "posts", "votes", "counters", "read models", "total"):
        assert f"\n{phase} " in output

    engine = create_engine(sqlalchemy_url(url))
    with engine.connect() as db:
        published = db.execute(
            text("SELECT count(*) FROM posts WHERE status = 'published'")
        ).scalar_one()
        sample = db.execute(text("SELECT id FROM accounts ORDER BY id LIMIT 20")).scalars().all()
        followed = db.execute(text("SELECT count(*) FROM follows")).scalar_one()
    engine.dispose()
    assert published == 3000 and followed > 300

    with credentials.open() as source:
        rows = list(csv.DictReader(source))
    assert [int(row["id"]) for row in rows] == sample

    # Every published post is cached; the sample's feeds are built; the rest are left to reads.
    posts = list(split.scan_iter(match=post_key("*"), count=1000))
    assert len(posts) == published
    feeds = {key for key in split.scan_iter(match=f"{FEED_PREFIX}*", count=1000)}
    assert feeds == {feed_key(account).encode() for account in sample}

    # One process, from the same database, builds exactly what two did.
    _seed(url, _redis_db(14), "--read-models-only", "--sample", "20", "--jobs", "1")
    assert _contents(split) == _contents(single)


def test_make_bench_seeds_what_is_missing_and_keeps_what_is_there(
    seed_database, tmp_path, monkeypatch
):
    """``bench.harness.ensure_seeded``: an empty database is seeded; a seeded one whose
    sample's credentials are gone (or empty) is seeded again; one whose read models Redis lost
    gets them rebuilt; a complete one is left alone."""
    from bench import harness as run

    url, (feeds, _) = seed_database
    monkeypatch.setattr(run, "DATABASE_URL", url)
    monkeypatch.setattr(run, "REDIS_URL", _redis_db(13))
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    credentials = tmp_path / "credentials.csv"
    args = [*SIZE, "--credentials", str(credentials)]

    def sample() -> list[str]:
        with credentials.open() as source:
            return [row["id"] for row in csv.DictReader(source)]

    def first_feed() -> bytes:
        return feed_key(sample()[0]).encode()

    run.ensure_seeded(args)  # nothing there yet
    assert len(sample()) == 20 and feeds.exists(first_feed())

    credentials.write_text("handle,password,id\n")  # the sample lost
    run.ensure_seeded(args)
    assert len(sample()) == 20 and feeds.exists(first_feed())

    feeds.flushdb()  # Redis restarted: the database is seeded, the feeds are gone
    run.ensure_seeded(args)
    assert feeds.exists(first_feed())

    feeds.set("marker", "1")  # complete: nothing is rebuilt (a rebuild flushes the db)
    run.ensure_seeded(args)
    assert feeds.get("marker") == b"1"
