"""Rebuilding read models from PostgreSQL, the source of truth: one key at a time when a read
finds it missing, or everything with ``flask feeds rebuild``.

A rebuilt key records the write model's versions (counters, votes, follow edges), so an older
event that arrives after the rebuild cannot undo it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sqlalchemy import Connection, select, text

from feed.clock import rfc3339
from feed.keys import (
    CELEBS_KEY,
    account_key,
    feed_key,
    follow_versions_key,
    following_key,
    list_keys,
    my_votes_key,
    next_key,
    post_key,
    posts_key,
    rebuild_key,
    tombstone_key,
)
from feed.readmodel import (
    SENTINEL,
    TOMBSTONE_SECONDS,
    Celebrities,
    Store,
    account_document,
    post_document,
    score_of,
)
from feed.schema import accounts

POST_COLUMNS = (
    "SELECT p.id, p.author_id, p.body, p.status, p.created_at, p.up, p.down, p.votes_version, "
    "a.handle, a.display_name, (SELECT coalesce(json_agg(json_build_object("
    "'id', m.id::text, 'content_type', m.content_type, 'size', m.size, "
    "'url', '/api/v1/media/' || m.id::text) ORDER BY m.created_at, m.id::text), '[]') "
    "FROM media m WHERE m.post_id = p.id AND m.status = 'attached') AS media "
    "FROM posts p JOIN accounts a ON a.id = p.author_id "
)
UNPUBLISHED = text("SELECT id FROM posts WHERE id = ANY(:ids) AND status <> 'published'")


# How long a list's rebuild may take unless it goes on (each step renews it): after that, a
# rebuild that died is taken over.
BUILD_MS = 30_000
# How long a rebuild waits for another one of the same list to end.
WAIT_FOR_OTHER_S = 10.0
# Post ids a rebuild adds to the next version per call.
FILL_CHUNK = 1000


def _rebuild_list(
    store: Store,
    key: str,
    ids_of: Callable[[Connection], list[int]],
    conn: Connection | None,
    *,
    cap: int = 0,
    ttl: int = 0,
) -> bool:
    """Rebuild a sorted set of post ids beside itself and swap it in: readers see the old list
    whole until the new one replaces it at once. Changes projected meanwhile are made to both
    (``feed/lua/feed.lua``), so none is lost to the swap. While another rebuild of the same
    list runs, this one waits for it to end (its result is as new); False when it did not
    swap."""
    token = uuid.uuid4().hex
    building = [next_key(key), rebuild_key(key)]
    deadline = time.monotonic() + WAIT_FOR_OTHER_S
    while not store.execute(store.call("rebuild_begin", building, [token, BUILD_MS])):
        if not store.redis.exists(building[1]) or time.monotonic() > deadline:
            return False  # the other one ended (a reader reads again), or still runs
        time.sleep(0.01)
    swapped = False
    try:
        with _connection(store, conn) as db:
            ids = ids_of(db)
        for i in range(0, max(len(ids), 1), FILL_CHUNK):
            chunk = ids[i : i + FILL_CHUNK]
            pairs = [v for post_id in chunk for v in (post_id, score_of(post_id))]
            if not store.execute(store.call("rebuild_fill", building, [token, BUILD_MS, *pairs])):
                return False  # its time ran out, and another took it over
        swap = store.call("rebuild_swap", list_keys(key), [token, cap, ttl])
        swapped = bool(store.execute(swap))
        return swapped
    finally:
        if not swapped:
            with contextlib.suppress(Exception):  # else it ends when its time runs out
                store.execute(store.call("rebuild_abandon", building, [token]))


def rebuild_feed(store: Store, account_id: int, conn: Connection | None = None) -> None:
    """The account's home feed: its newest ``feed_size`` posts (``FeedSources.home``)."""
    size = store.settings.feed_size
    _rebuild_list(
        store,
        feed_key(account_id),
        lambda db: store.sources.home(db, account_id, size),
        conn,
        cap=size,
        ttl=store.settings.feed_ttl_seconds,
    )


def rebuild_posts(store: Store, account_id: int, conn: Connection | None = None) -> None:
    """All published posts of one account."""
    _rebuild_list(
        store, posts_key(account_id), lambda db: store.sources.authored(db, account_id), conn
    )


def rebuild_following(store: Store, account_id: int, conn: Connection | None = None) -> None:
    """Whom the account follows, replaced at once (``rebuild_following`` in Redis), with the
    follower's counts version read in the same snapshot: follows and unfollows projected
    since then (their edges' versions above it) are applied over the snapshot."""
    with _connection(store, conn, repeatable=True) as db:
        floor = (
            db.execute(
                select(accounts.c.counts_version).where(accounts.c.id == account_id)
            ).scalar_one_or_none()
            or 0
        )
        followees = (
            db.execute(
                text("SELECT followee_id FROM follows WHERE follower_id = :me"), {"me": account_id}
            )
            .scalars()
            .all()
        )
    store.execute(
        store.call(
            "rebuild_following",
            [following_key(account_id), follow_versions_key(account_id)],
            [floor, *followees],
        )
    )


def rebuild_my_votes(store: Store, account_id: int, conn: Connection | None = None) -> None:
    """The account's votes, each with the post's votes version at this snapshot."""
    with _connection(store, conn) as db:
        rows = db.execute(
            text(
                "SELECT v.post_id, v.value, p.votes_version FROM votes v "
                "JOIN posts p ON p.id = v.post_id WHERE v.account_id = :me"
            ),
            {"me": account_id},
        ).all()
        mapping = {SENTINEL: "0:0"}
        mapping.update({str(post_id): f"{value}:{version}" for post_id, value, version in rows})
        pipe = store.redis.pipeline(transaction=True)
        pipe.delete(my_votes_key(account_id))
        pipe.hset(my_votes_key(account_id), mapping=mapping)
        pipe.execute()


def rebuild_celebrities(store: Store, conn: Connection | None = None) -> None:
    """The accounts whose posts are pulled at read time instead of fanned out, each with its
    counts version (so an older event cannot undo the rebuild), under a new ``_version`` (so
    every process's copy is read again)."""
    with _connection(store, conn) as db:
        rows = db.execute(
            select(accounts.c.id, accounts.c.counts_version).where(
                accounts.c.followers_count >= store.settings.feed_pull_threshold,
                accounts.c.status == "active",
            )
        ).all()
        mapping: dict[str, int] = {Celebrities.VERSION_FIELD: time.time_ns()}
        mapping.update({str(account): max(1, version) for account, version in rows})
        pipe = store.redis.pipeline(transaction=True)
        pipe.delete(CELEBS_KEY)
        pipe.hset(CELEBS_KEY, mapping=mapping)
        pipe.execute()


def cache_posts(
    store: Store, post_ids: Iterable[int], conn: Connection | None = None
) -> dict[int, str]:
    """Cache the given posts that are published, from PostgreSQL; returns the status of each id
    PostgreSQL knows.

    A deleted post gets a tombstone and leaves the cache. A pending post is left alone: a
    tombstone is final, and the post may yet be published. A tombstone found on a post that
    PostgreSQL says is published (an older version's, on a post read while it was pending) is
    lifted, and set again if the post was deleted meanwhile.
    """
    wanted = sorted({int(i) for i in post_ids})
    if not wanted:
        return {}
    with _connection(store, conn) as db:
        rows = (
            db.execute(text(POST_COLUMNS + "WHERE p.id = ANY(:ids)"), {"ids": wanted})
            .mappings()
            .all()
        )
        statuses = {row["id"]: row["status"] for row in rows}
        store.run(
            [delete_command(store, i) for i, status in statuses.items() if status == "deleted"]
        )
        _cache_published(store, db, [row for row in rows if row["status"] == "published"])
    return statuses


# What an older version's tombstone holds; it tombstoned posts read while pending too.
LEGACY_TOMBSTONE = b"1"


def _cache_published(store: Store, db: Connection, rows: list[Any]) -> None:
    """Cache published posts from their ``POST_COLUMNS`` rows. An older version's tombstone
    that refuses one is lifted (PostgreSQL says published: it was tombstoned while pending),
    and PostgreSQL read again: a post deleted in between is tombstoned again. A tombstone of
    this version's stands: it is set only for a deleted post."""
    answers = store.run([_cache_post_command(store, row) for row in rows])
    refused = [row for row, cached in zip(rows, answers, strict=True) if not cached]
    if not refused:
        return
    marks = store.run([("GET", tombstone_key(row["id"])) for row in refused])
    refused = [row for row, mark in zip(refused, marks, strict=True) if mark == LEGACY_TOMBSTONE]
    if not refused:
        return  # deleted since it was read: its tombstone stands
    store.run([("DEL", tombstone_key(row["id"])) for row in refused])
    store.run([_cache_post_command(store, row) for row in refused])
    gone = db.execute(UNPUBLISHED, {"ids": [row["id"] for row in refused]}).scalars().all()
    store.run([delete_command(store, post_id) for post_id in gone])


def delete_command(store: Store, post_id: int) -> tuple[Any, ...]:
    """The command tombstoning a deleted post and dropping its cache."""
    return store.call(
        "delete_post", [post_key(post_id), tombstone_key(post_id)], [TOMBSTONE_SECONDS]
    )


def post_document_of(row: Any) -> str:
    """The cached JSON of a post from a ``POST_COLUMNS`` row (what PostPublished would cache)."""
    return post_document(
        post_id=row["id"],
        author_id=row["author_id"],
        author_handle=row["handle"],
        author_display_name=row["display_name"],
        body=row["body"],
        media=row["media"],
        created_at=rfc3339(row["created_at"]),
    )


def _cache_post_command(store: Store, row: Any) -> tuple[Any, ...]:
    """Cache a post from a ``POST_COLUMNS`` row: its document, and its counts unless the
    cache holds newer ones (answers 0 when a tombstone refuses it)."""
    return store.call(
        "cache_post",
        [post_key(row["id"]), tombstone_key(row["id"])],
        [post_document_of(row), row["up"], row["down"], row["votes_version"]],
    )


# An account's counters, as its row and its counts events name them.
COUNTS = ("followers_count", "following_count", "posts_count", "counts_version")


def account_row(db: Connection, account_id: int) -> Any:
    """The account's row (a mapping), or None."""
    return db.execute(select(accounts).where(accounts.c.id == account_id)).mappings().first()


def cache_account(store: Store, account_id: int, conn: Connection | None = None) -> bool:
    """Cache one account's profile and counters; False when it does not exist or is gone."""
    with _connection(store, conn) as db:
        row = account_row(db, account_id)
        if row is None or row["status"] == "deleted":
            store.redis.delete(account_key(account_id))
            return False
        store.run(account_row_commands(store, row))
        return True


def account_row_commands(store: Store, row: Any) -> list[tuple[Any, ...]]:
    """Cache an account from its row: its profile, and its counters unless the cache holds
    newer ones (the last command answers as ``apply_counts`` does)."""
    document = account_document(
        account_id=row["id"],
        handle=row["handle"],
        display_name=row["display_name"],
        created_at=rfc3339(row["created_at"]),
    )
    counts = [*(row[name] for name in COUNTS), store.settings.feed_pull_threshold]
    return [
        ("HSET", account_key(row["id"]), "json", document),
        store.call("apply_counts", [account_key(row["id"])], counts),
    ]


def rebuild_account(store: Store, account_id: int) -> None:
    """Every key of one account: profile, posts, following, votes and its home feed."""
    with store.engine.connect() as conn:
        cache_account(store, account_id, conn)
        rebuild_posts(store, account_id, conn)
        rebuild_following(store, account_id, conn)
        rebuild_my_votes(store, account_id, conn)
        rebuild_feed(store, account_id, conn)
        post_ids = store.redis.zrange(feed_key(account_id), 0, -2)
        cache_posts(store, [int(i) for i in post_ids], conn)


def rebuild_all(store: Store, *, batch: int = 1000) -> dict[str, int]:
    """Rebuild every read model from PostgreSQL. Feeds are built for active accounts only;
    the others are built when they read again."""
    counts = {"accounts": 0, "posts": 0, "feeds": 0}
    with store.engine.connect() as conn:
        rebuild_celebrities(store, conn)
        for chunk in chunks(conn, text(POST_COLUMNS + "WHERE p.status = 'published'"), batch):
            _cache_published(store, conn, chunk)
            counts["posts"] += len(chunk)
        active = text(
            "SELECT id, last_active_at > now() - make_interval(days => :days) AS active "
            "FROM accounts WHERE status = 'active' ORDER BY id"
        )
        rows = conn.execute(active, {"days": store.settings.feed_active_days}).all()
        for account_id, is_active in rows:
            cache_account(store, account_id, conn)
            rebuild_posts(store, account_id, conn)
            rebuild_following(store, account_id, conn)
            rebuild_my_votes(store, account_id, conn)
            if is_active:
                rebuild_feed(store, account_id, conn)
                counts["feeds"] += 1
            else:
                store.redis.delete(feed_key(account_id))
            counts["accounts"] += 1
    return counts


def chunks(conn: Connection, query: Any, size: int) -> Iterator[list[Any]]:
    """Stream a query's rows, ``size`` at a time."""
    result = conn.execution_options(stream_results=True, max_row_buffer=size).execute(query)
    while chunk := result.mappings().fetchmany(size):
        yield chunk


class _connection:
    """Use the caller's connection, or open one (optionally a repeatable-read snapshot)."""

    def __init__(self, store: Store, conn: Connection | None, *, repeatable: bool = False) -> None:
        self._store, self._given, self._repeatable = store, conn, repeatable
        self._own: Connection | None = None

    def __enter__(self) -> Connection:
        if self._given is not None:
            return self._given
        self._own = self._store.engine.connect()
        if self._repeatable:
            self._own = self._own.execution_options(isolation_level="REPEATABLE READ")
        return self._own

    def __exit__(self, *exc: object) -> None:
        if self._own is not None:
            self._own.rollback()
            self._own.close()
