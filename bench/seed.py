"""``make seed``: a realistic social graph, loaded into PostgreSQL with COPY, then read models.

By default 100,000 accounts with follower counts from a power law (a handful above 50,000, the
median near 50), 1,000,000 posts over 30 days, votes on a share of them. Sizes are flags. Prints
how long each phase took, and writes the credentials of a sample of accounts for the load tests.

    python -m bench.seed [--accounts N] [--posts N] [--sample N] [--seed S] [--jobs N]
    python -m bench.seed --read-models-only [--sample N]

It seeds the database of DATABASE_URL (the machine's ``feed_bench`` database by default,
created and migrated if needed) and the Redis of REDIS_URL, replacing what they held. The read
models are built by ``--jobs`` processes (one per core by default). ``--read-models-only``
rebuilds just them from a seeded database, for a Redis that lost its data (``make bench`` does
this by itself).
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psycopg
from argon2 import PasswordHasher
from flask_migrate import upgrade
from sqlalchemy import create_engine, text

from app import create_app
from feed.bootstrap import Services
from feed.config import Settings, sqlalchemy_url
from feed.keys import post_key
from feed.readmodel import configure_compact_encoding
from feed.rebuild import (
    POST_COLUMNS,
    cache_account,
    chunks,
    post_document_of,
    rebuild_celebrities,
    rebuild_feed,
    rebuild_following,
    rebuild_my_votes,
)
from sagas.bootstrap import build_services

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/feed_bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
PASSWORD = "load test password"
EPOCH_MS = 1_767_225_600_000  # next_id()'s epoch: 2026-01-01
DAY_MS = 24 * 3600 * 1000
WORDS = (
    "coffee",
    "morning",
    "sunset",
    "train",
    "music",
    "garden",
    "code",
    "bread",
    "rain",
    "city",
    "friends",
    "book",
    "weekend",
    "river",
    "photo",
    "walk",
    "cat",
    "dog",
    "dinner",
    "market",
)


@contextmanager
def phase(name: str, timings: dict[str, float]) -> Iterator[None]:
    started = time.perf_counter()
    print(f"{name} ...", flush=True)
    yield
    timings[name] = time.perf_counter() - started
    print(f"{name}: {timings[name]:.1f} s", flush=True)


def follower_targets(accounts: int, rnd: random.Random) -> list[int]:
    """Followers per account, by rank: a power law with a median near 50 and a handful of
    accounts above 50,000 (scaled down with the number of accounts)."""
    exponent = 0.655
    top = 60_000 * accounts / 100_000
    targets = [max(1, int(top / (rank**exponent))) for rank in range(1, accounts + 1)]
    for rank in range(min(5, accounts)):  # the celebrities
        targets[rank] = int(min(accounts - 1, top * rnd.uniform(0.85, 1.5)))
    return [min(t, accounts - 1) for t in targets]


@contextmanager
def foreign_keys_checked_after(conn: psycopg.Connection, table: str) -> Iterator[None]:
    """Drop ``table``'s foreign keys for a bulk load and add them back after it: PostgreSQL then
    validates each key with one join instead of a trigger call per loaded row."""
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE contype = 'f' AND conrelid = %s::regclass",
            (table,),
        )
        keys = cursor.fetchall()
        for name, _ in keys:
            cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    yield
    with conn.cursor() as cursor:
        for name, definition in keys:
            cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')


def copy_rows(conn: psycopg.Connection, statement: str, rows) -> int:
    count = 0
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--posts", type=int, default=1_000_000)
    parser.add_argument("--vote-share", type=float, default=0.3)
    parser.add_argument(
        "--sample", type=int, default=2_000, help="accounts whose credentials are written"
    )
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 2,
        help="processes building the read models (default: one per core)",
    )
    parser.add_argument(
        "--read-models-only",
        action="store_true",
        help="rebuild only the read models of a seeded database (after Redis lost them)",
    )
    parser.add_argument("--credentials", type=Path, default=RESULTS / "credentials.csv")
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    timings: dict[str, float] = {}
    if args.read_models_only:
        services = build_services(_settings(database_url, redis_url))
        with services.engine.connect() as db:
            account_ids = list(
                db.execute(
                    text("SELECT id FROM accounts ORDER BY id LIMIT :n"), {"n": args.sample}
                ).scalars()
            )
    else:
        services, account_ids = seed_database(args, database_url, redis_url, timings)

    with phase("read models", timings):
        services.redis.flushdb(asynchronous=True)  # a big db frees in the background
        configure_compact_encoding(services.redis)
        rebuild_celebrities(services.store)
        build_read_models(database_url, redis_url, account_ids[: args.sample], args.jobs)
    if not args.read_models_only:
        args.credentials.parent.mkdir(parents=True, exist_ok=True)
        with args.credentials.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["handle", "password", "id"])
            for index, account_id in enumerate(account_ids[: args.sample]):
                writer.writerow([f"user{index}", PASSWORD, account_id])
    services.close()
    total = sum(timings.values())
    print(f"\n{'phase':<12} {'seconds':>8}")
    for name, seconds in timings.items():
        print(f"{name:<12} {seconds:>8.1f}")
    print(f"{'total':<12} {total:>8.1f}")
    if not args.read_models_only:
        print(f"credentials of {args.sample} active accounts: {args.credentials}")
    return 0


def seed_database(
    args: argparse.Namespace, database_url: str, redis_url: str, timings: dict[str, float]
) -> tuple[Services, list[int]]:
    """The PostgreSQL phases: schema, accounts, follows, posts, votes, counters. Returns the
    services and the accounts' ids (the sample's first)."""
    rnd = random.Random(args.seed)

    with phase("database", timings):
        _ensure_database(database_url)
        services = build_services(_settings(database_url, redis_url))
        app = create_app(services=services)
        with app.app_context():
            upgrade()
    conn = psycopg.connect(database_url, autocommit=False)
    with conn.cursor() as cursor:
        # Index builds after the bulk loads sort in memory instead of in temporary files, and so
        # do the hash joins and aggregates of the foreign keys' checks and the counters: with
        # the default 4MB the accounts' counters took 47 s, with 256MB 12 s.
        cursor.execute("SET maintenance_work_mem = '1GB'")
        cursor.execute("SET work_mem = '256MB'")
        cursor.execute(
            "TRUNCATE campaign_placements, campaigns, media, notifications, ledger_entries, "
            "wallets, processed_steps, participant_faults, saga_operator_actions, saga_steps, "
            "sagas, idempotency_keys, outbox, votes, follows, posts, account_sessions, accounts"
        )
    conn.commit()

    now_ms = int(time.time() * 1000)
    # The service's own parameters: a login of a seeded account is not also a rehash.
    defaults = Settings()
    password_hash = PasswordHasher(
        time_cost=defaults.argon2_time_cost,
        memory_cost=defaults.argon2_memory_cost,
        parallelism=defaults.argon2_parallelism,
    ).hash(PASSWORD)
    with phase("accounts", timings):
        account_ids = [((now_ms - 31 * DAY_MS - EPOCH_MS) << 22) + i for i in range(args.accounts)]

        def account_rows():
            for index, account_id in enumerate(account_ids):
                # sampled accounts are active; the rest were last seen within 60 days
                seen = now_ms - (0 if index < args.sample else rnd.randint(0, 60 * DAY_MS))
                yield (
                    account_id,
                    f"user{index}",
                    f"User {index}",
                    password_hash,
                    _ts(now_ms - 31 * DAY_MS),
                    _ts(seen),
                )

        copy_rows(
            conn,
            "COPY accounts (id, handle, display_name, password_hash, created_at, "
            "last_active_at) FROM STDIN",
            account_rows(),
        )
        conn.commit()
    print(f"  {args.accounts} accounts, the first {args.sample} active now")

    with phase("follows", timings):
        targets = follower_targets(args.accounts, rnd)
        order = list(range(args.accounts))
        rnd.shuffle(order)  # popularity is not the same as account age

        def follow_rows():
            population = range(args.accounts)
            for rank, followee_index in enumerate(order):
                k = targets[rank]
                chosen = [f for f in rnd.sample(population, k + 1) if f != followee_index][:k]
                for follower_index in chosen:
                    yield (account_ids[follower_index], account_ids[followee_index])

        with conn.cursor() as cursor:
            cursor.execute("ALTER TABLE follows DROP CONSTRAINT pk_follows")
            cursor.execute("DROP INDEX ix_follows_followee_id_follower_id")
        with foreign_keys_checked_after(conn, "follows"):
            edges = copy_rows(
                conn, "COPY follows (follower_id, followee_id) FROM STDIN", follow_rows()
            )
        with conn.cursor() as cursor:  # indexes built once, after the load
            cursor.execute(
                "ALTER TABLE follows ADD CONSTRAINT pk_follows "
                "PRIMARY KEY (follower_id, followee_id)"
            )
            cursor.execute(
                "CREATE INDEX ix_follows_followee_id_follower_id "
                "ON follows (followee_id, follower_id)"
            )
        conn.commit()
    print(
        f"  {edges} follows; most followed: {sorted(targets, reverse=True)[:5]}, "
        f"median {sorted(targets)[len(targets) // 2]}"
    )

    with phase("posts", timings):
        weights = [rnd.paretovariate(1.2) for _ in range(args.accounts)]
        authors = rnd.choices(range(args.accounts), weights=weights, k=args.posts)
        stamps = sorted(now_ms - rnd.randint(0, 30 * DAY_MS) for _ in range(args.posts))
        post_ids = [((ms - EPOCH_MS) << 22) | (i % 4_194_304) for i, ms in enumerate(stamps)]

        def post_rows():
            for post_id, ms, author in zip(post_ids, stamps, authors, strict=True):
                body = " ".join(rnd.choices(WORDS, k=rnd.randint(3, 14)))
                yield (post_id, account_ids[author], body, "published", _ts(ms))

        with foreign_keys_checked_after(conn, "posts"):
            copy_rows(
                conn, "COPY posts (id, author_id, body, status, created_at) FROM STDIN", post_rows()
            )
        conn.commit()

    with phase("votes", timings):
        voted = rnd.sample(range(args.posts), int(args.posts * args.vote_share))

        def vote_rows():
            for index in voted:
                for voter in set(rnd.choices(range(args.accounts), k=rnd.randint(1, 5))):
                    yield (account_ids[voter], post_ids[index], 1 if rnd.random() < 0.8 else -1)

        with foreign_keys_checked_after(conn, "votes"):
            votes = copy_rows(
                conn, "COPY votes (account_id, post_id, value) FROM STDIN", vote_rows()
            )
        conn.commit()
    print(f"  {votes} votes")

    with phase("counters", timings):
        with conn.cursor() as cursor:
            cursor.execute(
                "UPDATE posts p SET up = v.up, down = v.down, votes_version = v.n FROM ("
                "SELECT post_id, count(*) FILTER (WHERE value = 1) AS up, "
                "count(*) FILTER (WHERE value = -1) AS down, count(*) AS n FROM votes "
                "GROUP BY post_id) v WHERE v.post_id = p.id"
            )
            cursor.execute(
                "UPDATE accounts a SET followers_count = coalesce(f.n, 0), "
                "following_count = coalesce(g.n, 0), posts_count = coalesce(p.n, 0), "
                "counts_version = 1 FROM accounts b "
                "LEFT JOIN (SELECT followee_id, count(*) n FROM follows GROUP BY 1) f "
                "ON f.followee_id = b.id "
                "LEFT JOIN (SELECT follower_id, count(*) n FROM follows GROUP BY 1) g "
                "ON g.follower_id = b.id "
                "LEFT JOIN (SELECT author_id, count(*) n FROM posts GROUP BY 1) p "
                "ON p.author_id = b.id WHERE a.id = b.id"
            )
            cursor.execute("ANALYZE")
        conn.commit()
    conn.close()
    return services, account_ids


def build_read_models(database_url: str, redis_url: str, sample: list[int], jobs: int) -> None:
    """Every published post into the post cache, and the sample's feeds and keys (everyone else's
    are built when they first read), split over ``jobs`` processes: each one's share of the posts
    (by id) and of the sample. One process waits on PostgreSQL, then on Redis, then renders; two
    or more keep both cores busy (this phase of the default seed on 2 cores: 151 s with one
    process, 95 s with two, 90 s with three)."""
    if jobs <= 1:
        _build_read_models_part(database_url, redis_url, 0, 1, sample)
        return
    spawn = multiprocessing.get_context("spawn")  # not a fork of this process's connections
    with ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
        parts = [
            pool.submit(
                _build_read_models_part, database_url, redis_url, part, jobs, sample[part::jobs]
            )
            for part in range(jobs)
        ]
        for done in parts:
            done.result()  # a part's error ends the seed


def _build_read_models_part(
    database_url: str, redis_url: str, part: int, parts: int, sample: list[int]
) -> None:
    services = build_services(_settings(database_url, redis_url))
    store = services.store
    published = text(POST_COLUMNS + "WHERE p.status = 'published' AND mod(p.id, :parts) = :part")
    with services.engine.connect() as db:
        for chunk in chunks(db, published.bindparams(parts=parts, part=part), 2000):
            pipe = services.redis.pipeline(transaction=False)
            for row in chunk:
                pipe.hset(
                    post_key(row["id"]),
                    mapping={
                        "json": post_document_of(row),
                        "up": row["up"],
                        "down": row["down"],
                        "v": row["votes_version"],
                    },
                )
            pipe.execute()
        for account_id in sample:
            cache_account(store, account_id, db)
            rebuild_following(store, account_id, db)
            rebuild_my_votes(store, account_id, db)
            rebuild_feed(store, account_id, db)
    services.close()


def _settings(database_url: str, redis_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        broker_url=redis_url,
        secret_key="seed-secret-key-not-for-production",
        log_json=False,
    )


def _ts(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}+00"


def _ensure_database(url: str) -> None:
    base, _, name = url.rpartition("/")
    name = name.split("?")[0]
    admin = create_engine(sqlalchemy_url(f"{base}/postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).first()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
