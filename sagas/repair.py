"""Repair: rebuild from PostgreSQL exactly the Redis keys a saga touched, before it is retried.
A dry run shows what would change without changing it.

No orchestrator we know of repairs the read models a failed saga left behind; here an operator
sees, key by key, what is wrong in Redis, and fixes just that.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from feed.keys import account_key, feed_key, post_key, posts_key
from feed.readmodel import SENTINEL, Store
from feed.rebuild import (
    cache_account,
    cache_posts,
    rebuild_feed,
    rebuild_posts,
)
from sagas import engine
from sagas.engine import DEFINITIONS


def touched_keys(conn: Connection, saga: dict[str, Any]) -> list[tuple[str, int]]:
    """The read-model keys (kind, id) the saga can have changed, as its definition says."""
    definition = DEFINITIONS[(saga["type"], saga["version"])]
    return sorted(set(definition.touched(conn, saga["data"])))


def plan(store: Store, conn: Connection, keys: list[tuple[str, int]]) -> dict[str, Any]:
    """For each key: what Redis holds against what PostgreSQL says it should. Only the keys
    that differ are listed; a missing feed or list is fine (it is rebuilt when read)."""
    changes: dict[str, Any] = {}
    for kind, ident in keys:
        if kind in ("feed", "posts"):
            key = feed_key(ident) if kind == "feed" else posts_key(ident)
            if not store.redis.exists(key):
                continue
            have = {int(m) for m in store.redis.zrange(key, 0, -1) if m.decode() != SENTINEL}
            want = set(
                store.sources.home(conn, ident, store.settings.feed_size)
                if kind == "feed"
                else store.sources.authored(conn, ident)
            )
            if have != want:
                changes[key] = {
                    "add": sorted(str(i) for i in want - have),
                    "remove": sorted(str(i) for i in have - want),
                }
        elif kind == "post":
            cached = store.redis.hmget(post_key(ident), "up", "down")
            row = conn.execute(
                text("SELECT status, up, down FROM posts WHERE id = :id"), {"id": ident}
            ).first()
            published = row is not None and row.status == "published"
            if cached[0] is not None and not published:
                changes[post_key(ident)] = {"remove": "the post is not published"}
            elif (
                published
                and cached[0] is not None
                and (int(cached[0]), int(cached[1])) != (row.up, row.down)
            ):
                changes[post_key(ident)] = {
                    "counts": {
                        "redis": [int(cached[0]), int(cached[1])],
                        "postgres": [row.up, row.down],
                    }
                }
        elif kind == "account":
            cached = store.redis.hget(account_key(ident), "json")
            status = conn.execute(
                text("SELECT status FROM accounts WHERE id = :id"), {"id": ident}
            ).scalar_one_or_none()
            if cached is not None and status in (None, "deleted"):
                changes[account_key(ident)] = {"remove": "the account is deleted"}
    return changes


def apply(store: Store, conn: Connection, keys: list[tuple[str, int]]) -> None:
    """Rebuild the given keys from PostgreSQL."""
    for kind, ident in keys:
        if kind == "feed" and store.redis.exists(feed_key(ident)):
            rebuild_feed(store, ident, conn)
        elif kind == "posts" and store.redis.exists(posts_key(ident)):
            rebuild_posts(store, ident, conn)
        elif kind == "post":
            store.redis.delete(post_key(ident))  # PostgreSQL's values win, whatever version
            cache_posts(store, [ident], conn)
        elif kind == "account":
            store.redis.delete(account_key(ident))
            cache_account(store, ident, conn)


def repair(store: Store, saga: dict[str, Any], *, dry_run: bool) -> dict[str, Any]:
    """Plan, and unless ``dry_run``, apply the repair of one saga's keys."""
    with store.engine.connect() as conn:
        keys = touched_keys(conn, saga)
        changes = plan(store, conn, keys)
        if not dry_run and changes:
            apply(store, conn, keys)
    return {"keys_checked": len(keys), "dry_run": dry_run, "changes": changes}


def repair_and_retry(
    store: Store, conn: Connection, saga_id: str, operator: str
) -> tuple[engine.Instance, dict[str, Any]]:
    """Repair a failed or stuck saga's keys, then retry it, both recorded in the caller's
    transaction (one command: a replay of it repairs nothing). The Redis writes rebuild from
    PostgreSQL, so a transaction run again does no harm."""
    saga = engine.load(conn, saga_id).row
    if saga["status"] not in ("failed", "stuck"):
        raise engine.InvalidTransition(f"a {saga['status']} saga cannot be retried")
    report = repair(store, saga, dry_run=False)
    engine.record_action_in(conn, saga_id, operator, "repair", {"changes": report["changes"]})
    return engine.retry_in(conn, saga_id, operator), report
