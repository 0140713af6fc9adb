"""The read side: feeds, posts and accounts from Redis, one round trip per page where it can.

A key that is missing is rebuilt from PostgreSQL before answering, so a read never answers an
empty or partial feed because Redis lost a key. A read that carries a consistency token waits
(a bounded time) for the projection to reach it, then falls back to PostgreSQL: never stale in
silence. ``Page.source`` says which model answered.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from feed.clock import rfc3339
from feed.errors import DependencyDown, NotFound
from feed.readmodel import (
    CELEBS_KEY,
    POSTS_PREFIX,
    Store,
    account_key,
    applied_key,
    feed_key,
    following_key,
    my_votes_key,
    post_key,
    posts_key,
    score_of,
)
from feed.rebuild import (
    POST_COLUMNS,
    cache_account,
    cache_posts,
    post_document_of,
    rebuild_celebrities,
    rebuild_feed,
    rebuild_following,
    rebuild_my_votes,
    rebuild_posts,
)

READ_MODEL = "redis"
WRITE_MODEL = "postgres"
MAX_REBUILDS = 5


@dataclass(frozen=True)
class Cursor:
    """A list request: newest first, ids strictly below ``max_id`` and above ``since_id``."""

    limit: int = 20
    max_id: int | None = None
    since_id: int | None = None


@dataclass
class Page:
    items: list[bytes]  # each post's JSON
    next_max_id: str | None
    source: str = READ_MODEL
    rebuilt: list[str] = field(default_factory=list)
    rendered: bytes | None = None  # the whole page's JSON, when the page script rendered it


@dataclass
class Item:
    value: dict[str, Any] | bytes  # bytes: JSON already rendered
    source: str = READ_MODEL


def wait_for_position(store: Store, position: int) -> bool:
    """True once the event at ``position`` is projected; False after ``read_wait_ms``."""
    deadline = time.monotonic() + store.settings.read_wait_ms / 1000
    while True:
        if store.redis.exists(applied_key(position)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def home_timeline(store: Store, me: int, cursor: Cursor, *, position: int | None = None) -> Page:
    """The caller's home feed: its own posts, those it follows, pulled high-follower posts."""
    if position is not None and not wait_for_position(store, position):
        return _home_timeline_from_db(store, me, cursor)
    rebuilt: list[str] = []
    for _ in range(MAX_REBUILDS):
        reply = store.held.run(
            store.scripts.read_home_page,
            [feed_key(me), following_key(me), CELEBS_KEY, my_votes_key(me)],
            [
                *_cursor_args(cursor)[:3],
                store.settings.feed_ttl_seconds,
                POSTS_PREFIX,
                *_cursor_args(cursor)[3:],
                "1",
            ],
        )
        if reply[0] == b"miss":
            rebuilt.append(_rebuild_missing(store, me, reply[1:]))
            continue
        if reply[0] == b"json":  # the script rendered the page: every post was cached
            next_max_id = None if reply[2] == b"null" else reply[2][1:-1].decode()
            return Page([], next_max_id, rendered=reply[1], rebuilt=rebuilt)
        page = _assemble(store, reply, with_vote=True, home_of=me)
        page.rebuilt = rebuilt
        return page
    raise DependencyDown("The feed could not be read; retry shortly.")


def account_posts(
    store: Store,
    account_id: int,
    viewer: int | None,
    cursor: Cursor,
    *,
    position: int | None = None,
) -> Page:
    """One account's published posts, newest first."""
    if position is not None and not wait_for_position(store, position):
        return _account_posts_from_db(store, account_id, viewer, cursor)
    rebuilt: list[str] = []
    for _ in range(MAX_REBUILDS):
        max_id, since_id, limit, max_score, min_score = _cursor_args(cursor)
        reply = store.held.run(
            store.scripts.read_posts_page,
            [posts_key(account_id), my_votes_key(viewer or "-"), account_key(account_id)],
            [max_id, since_id, limit, max_score, min_score, "1" if viewer else "0"],
        )
        if reply[0] == b"miss":
            what = reply[1].decode()
            if what == "account" and not cache_account(store, account_id):
                raise NotFound("No such account.")
            rebuilt.append(_rebuild_missing(store, viewer or 0, reply[1:], owner=account_id))
            continue
        page = _assemble(store, reply, with_vote=viewer is not None, posts_of=account_id)
        page.rebuilt = rebuilt
        return page
    raise DependencyDown("The posts could not be read; retry shortly.")


def get_post(
    store: Store, post_id: int, viewer: int | None, *, position: int | None = None
) -> Item:
    """One published post with its current counts (and the viewer's vote)."""
    if position is not None and not wait_for_position(store, position):
        posts = _posts_from_db(store, [post_id], viewer)
        if not posts:
            raise NotFound("No such post.")
        return Item(posts[0], WRITE_MODEL)
    for _ in range(MAX_REBUILDS):
        reply = store.held.run(
            store.scripts.read_post,
            [post_key(post_id), my_votes_key(viewer or "-")],
            [post_id, "1" if viewer else "0"],
        )
        if reply[0] == b"miss":
            if reply[1] == b"post":
                if not cache_posts(store, [post_id]):
                    raise NotFound("No such post.")
            else:
                rebuild_my_votes(store, viewer)
            continue
        _, document, up, down, vote = reply
        return Item(_render(document, up, down, vote, viewer is not None))
    raise DependencyDown("The post could not be read; retry shortly.")


def get_account(store: Store, account_id: int, *, position: int | None = None) -> Item:
    """An account's profile with its followers, following and posts counts."""
    if position is not None and not wait_for_position(store, position):
        return Item(_account_from_db(store, account_id), WRITE_MODEL)
    for _ in range(MAX_REBUILDS):
        document, followers, following, posts = store.redis.hmget(
            account_key(account_id), "json", "followers", "following", "posts"
        )
        if document is None or followers is None:
            if not cache_account(store, account_id):
                raise NotFound("No such account.")
            continue
        account = json.loads(document)
        account.update(
            followers_count=int(followers), following_count=int(following), posts_count=int(posts)
        )
        return Item(account)
    raise DependencyDown("The account could not be read; retry shortly.")


# --- assembling answers -------------------------------------------------------------------


def _cursor_args(cursor: Cursor) -> list[Any]:
    return [
        "" if cursor.max_id is None else str(cursor.max_id),
        "" if cursor.since_id is None else str(cursor.since_id),
        cursor.limit,
        "" if cursor.max_id is None else score_of(cursor.max_id),
        "" if cursor.since_id is None else score_of(cursor.since_id),
    ]


def _render(document: bytes | str, up: Any, down: Any, vote: Any, with_vote: bool) -> bytes:
    """A post's JSON: the document pre-rendered when the post was projected, with its counters
    (and the viewer's vote) spliced in before the closing brace. Nothing is parsed."""
    if isinstance(document, str):
        document = document.encode()
    ups, downs = int(up or 0), int(down or 0)
    counters = b',"up":%d,"down":%d,"score":%d' % (ups, downs, ups - downs)
    if with_vote:
        counters += b',"my_vote":%d' % (int(vote.split(b":")[0]) if vote else 0)
    return document[:-1] + counters + b"}"


def render_page(page: Page) -> bytes:
    """The JSON of a page of posts, joined from the posts' pre-rendered JSON."""
    if page.rendered is not None:
        return page.rendered
    next_max_id = b'"%s"' % page.next_max_id.encode() if page.next_max_id else b"null"
    return b'{"items":[' + b",".join(page.items) + b'],"next_max_id":' + next_max_id + b"}"


def _assemble(
    store: Store,
    reply: list[Any],
    *,
    with_vote: bool,
    home_of: int | None = None,
    posts_of: int | None = None,
) -> Page:
    """Turn a page script's flat reply into posts; posts missing from the cache are loaded from
    PostgreSQL, and those no longer published leave the feed."""
    more = reply[-1] == b"1"
    body = reply[1:-1]
    rows = [body[i : i + 5] for i in range(0, len(body), 5)]
    missing = [int(row[0]) for row in rows if row[1] is None]
    refreshed: dict[int, list[Any]] = {}
    if missing:
        published = cache_posts(store, missing)
        gone = [m for m in missing if m not in published]
        if gone:
            for key in filter(
                None, (home_of and feed_key(home_of), posts_of and posts_key(posts_of))
            ):
                store.redis.zrem(key, *gone)
        pipe = store.redis.pipeline(transaction=False)
        for post_id in published:
            pipe.hmget(post_key(post_id), "json", "up", "down")
        for post_id, values in zip(published, pipe.execute(), strict=True):
            refreshed[post_id] = values
    items = []
    for post_id, document, up, down, vote in rows:
        if document is None:
            # Not published any more; or lost again between its caching and this read (Redis
            # flushed or restarted in between): left out of this page, cached by the next read.
            document, up, down = refreshed.get(int(post_id)) or (None, None, None)
            if document is None:
                continue
        items.append(_render(document, up, down, vote, with_vote))
    next_max_id = rows[-1][0].decode() if more and rows else None
    return Page(items, next_max_id)


def _rebuild_missing(store: Store, me: int, what: list[bytes], owner: int | None = None) -> str:
    kind = what[0].decode()
    if kind == "feed":
        rebuild_feed(store, me)
    elif kind == "celebs":
        rebuild_celebrities(store)
    elif kind == "following":
        rebuild_following(store, me)
    elif kind == "myvotes":
        rebuild_my_votes(store, me)
    elif kind == "posts":
        for author in what[1:] or [owner or me]:
            rebuild_posts(store, int(author))
    elif kind == "account":
        pass  # cached by the caller
    return kind


# --- the write model, for reads that must reflect a command the projection has not reached --


def _posts_from_db(store: Store, post_ids: list[int], viewer: int | None) -> list[bytes]:
    if not post_ids:
        return []
    with store.engine.connect() as conn:
        rows = (
            conn.execute(
                text(
                    POST_COLUMNS + "WHERE p.id = ANY(:ids) AND p.status = 'published' "
                    "ORDER BY p.id DESC"
                ),
                {"ids": post_ids},
            )
            .mappings()
            .all()
        )
        votes = {}
        if viewer:
            votes = dict(
                conn.execute(
                    text(
                        "SELECT post_id, value FROM votes WHERE account_id = :me "
                        "AND post_id = ANY(:ids)"
                    ),
                    {"me": viewer, "ids": post_ids},
                ).all()
            )
    out = []
    for row in rows:
        document = post_document_of(row)
        vote = f"{votes.get(row['id'], 0)}:0".encode() if viewer else None
        out.append(_render(document, row["up"], row["down"], vote, viewer is not None))
    return out


def _page_from_db(
    store: Store, sql: str, params: dict[str, Any], cursor: Cursor, viewer: int | None
) -> Page:
    bounds = ""
    if cursor.max_id is not None:
        bounds += " AND p.id < :max_id"
        params["max_id"] = cursor.max_id
    if cursor.since_id is not None:
        bounds += " AND p.id > :since_id"
        params["since_id"] = cursor.since_id
    params["n"] = cursor.limit + 1
    with store.engine.connect() as conn:
        ids = list(
            conn.execute(text(sql + bounds + " ORDER BY p.id DESC LIMIT :n"), params).scalars()
        )
    more = len(ids) > cursor.limit
    ids = ids[: cursor.limit]
    items = _posts_from_db(store, ids, viewer)
    return Page(items, str(ids[-1]) if more and ids else None, WRITE_MODEL)


def _home_timeline_from_db(store: Store, me: int, cursor: Cursor) -> Page:
    sql = (
        "SELECT p.id FROM posts p WHERE p.status = 'published' AND (p.author_id = :me "
        "OR p.author_id IN (SELECT followee_id FROM follows WHERE follower_id = :me))"
    )
    return _page_from_db(store, sql, {"me": me}, cursor, me)


def _account_posts_from_db(
    store: Store, account_id: int, viewer: int | None, cursor: Cursor
) -> Page:
    _account_from_db(store, account_id)  # 404 for an unknown account
    sql = "SELECT p.id FROM posts p WHERE p.status = 'published' AND p.author_id = :author"
    return _page_from_db(store, sql, {"author": account_id}, cursor, viewer)


def _account_from_db(store: Store, account_id: int) -> dict[str, Any]:
    with store.engine.connect() as conn:
        row = (
            conn.execute(
                text("SELECT * FROM accounts WHERE id = :id AND status <> 'deleted'"),
                {"id": account_id},
            )
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound("No such account.")
    return {
        "id": str(row["id"]),
        "handle": row["handle"],
        "display_name": row["display_name"],
        "created_at": rfc3339(row["created_at"]),
        "followers_count": row["followers_count"],
        "following_count": row["following_count"],
        "posts_count": row["posts_count"],
    }
