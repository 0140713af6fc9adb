"""The read side: feeds, posts and accounts from Redis, one round trip per page where it can.

A key that is missing is rebuilt from PostgreSQL before answering, so a read never answers an
empty or partial feed because Redis lost a key. A read that carries a consistency token waits
(a bounded time) for the projection to reach it, then falls back to PostgreSQL: never stale in
silence. ``Page.source`` says which model answered.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from feed.clock import rfc3339
from feed.errors import DependencyDown, NotFound
from feed.keys import (
    account_key,
    applied_key,
    feed_key,
    following_key,
    my_votes_key,
    post_key,
    posts_key,
)
from feed.origin import ensure_following
from feed.readmodel import ID_SHIFT, SENTINEL, Store, remove_from, render_post, score_of
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
    dropped: bool = False  # posts read from a list were gone (deleted, or lost again)


@dataclass
class Item:
    value: dict[str, Any] | bytes  # bytes: JSON already rendered
    source: str = READ_MODEL


# A post as a page read it: id, cached JSON, up, down, the reader's vote ("value:version").
Row = tuple[str, bytes | None, bytes | None, bytes | None, bytes | None]


def wait_for_position(store: Store, position: int, *, wait: bool = True) -> bool:
    """True once the event at ``position`` is projected; False after ``read_wait_ms`` (at
    once without ``wait``: an expired token's)."""
    deadline = time.monotonic() + (store.settings.read_wait_ms / 1000 if wait else 0)
    while True:
        if store.redis.exists(applied_key(position)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


class Window:
    """The newest ``want`` post ids of one sorted set (a feed, an account's posts) within a
    cursor's bounds, read from the set's slot by a plain ``ZRANGEBYSCORE`` in a caller's batch.

    Plain commands, not a function: a function's ``redis.call`` turned the window's reply into
    Lua values and back, several times the command's own cost in Redis (docs/performance.md).
    The window asks for more entries than it wants, and what Redis's order leaves open is
    settled here: ids of one millisecond share a score and come oldest first, so a
    millisecond the read may have cut is left out, and the rest sorted newest first. When too
    few remain (many posts in one millisecond, or at the cursor's bounds), the window is read
    again, larger (``settle``).
    """

    def __init__(self, key: str, cursor: Cursor, want: int, ceiling: int | None = None) -> None:
        # One more than wanted shows whether the last millisecond goes on; one more again
        # when max id is given: the page before ended on that post, and it is left out.
        self.key, self.want = key, want
        self.take = want + 1 + (cursor.max_id is not None)
        self.max_id, self.since_id = cursor.max_id, cursor.since_id
        # a post newer than max id scores below max id's score
        self.lo: Any = "-inf" if cursor.max_id is None else score_of(cursor.max_id)
        self.hi: Any = "+inf" if cursor.since_id is None else score_of(cursor.since_id)
        if ceiling is not None and (self.hi == "+inf" or ceiling < self.hi):
            self.hi = ceiling  # no post older than this can make the page

    def commands(self) -> list[tuple[Any, ...]]:
        read = ("ZRANGEBYSCORE", self.key, self.lo, self.hi, "LIMIT", 0, self.take)
        # A set that exists holds the sentinel, after every post: a window open to the end
        # shows it, one that stops before asks whether the set exists, after its read, so a
        # set evicted in between is taken for missing (rebuilt), never for empty.
        return [read] if self.hi == "+inf" else [read, ("EXISTS", self.key)]

    @property
    def size(self) -> int:
        """How many commands ``commands`` gives (replies to take for ``ids``)."""
        return 1 if self.hi == "+inf" else 2

    def ids(self, replies: list[Any]) -> list[int] | None | object:
        """The window's ids from its commands' ``replies``, newest first; None when the set is
        missing; ``UNDECIDED`` when it must be read again, larger."""
        members = replies[0]
        exists = replies[1] if self.size == 2 else members
        if not exists:
            return None
        ended = len(members) < self.take or members[-1] == SENTINEL_BYTES
        ids = [int(m) for m in members if m != SENTINEL_BYTES]
        if not ended:  # its last millisecond may go on past the cut
            cut = ids[-1] >> ID_SHIFT
            ids = [i for i in ids if i >> ID_SHIFT != cut]
        if self.max_id is not None:
            ids = [i for i in ids if i < self.max_id]
        if self.since_id is not None:
            ids = [i for i in ids if i > self.since_id]
        if not ended and len(ids) < self.want:
            return UNDECIDED
        ids.sort(reverse=True)
        return ids[: self.want]

    def settle(self, store: Store, client: Any, ids: Any) -> list[int] | None:
        """``ids`` as ``ids`` gave them, the window read again (larger each time) while they
        are ``UNDECIDED``."""
        while ids is UNDECIDED:
            self.take *= 4
            ids = self.ids(store.run(self.commands(), client=client))
        return ids


UNDECIDED = object()
SENTINEL_BYTES = SENTINEL.encode()


def _split(replies: list[Any], windows: Sequence[Window]) -> list[list[Any]]:
    """``replies`` cut into each window's share, in order."""
    out, at = [], 0
    for window in windows:
        out.append(replies[at : at + window.size])
        at += window.size
    return out


def home_timeline(
    store: Store, me: int, cursor: Cursor, *, position: int | None = None, wait: bool = True
) -> Page:
    """The caller's home feed: its own posts, those it follows, pulled high-follower posts.

    Two round trips. First, from the reader's slot, the feed's window and which pulled
    accounts it follows, with the pull set's version (to check this process's copy of it) and
    the windows of the pulled accounts the reader followed at its last read (from their
    slots); then the posts' hashes and the reader's votes. When the reader's pulled accounts
    changed, their windows take one more round trip between.
    """
    ensure_following(store)
    if position is not None and not wait_for_position(store, position, wait=wait):
        return _home_timeline_from_db(store, me, cursor)
    # A read with a token, or after a rebuild, is answered by the primaries: a replica may lag.
    client = store.redis if position is not None else store.replica
    celebrities, rebuilt, refilled = store.celebrities, [], False
    want = cursor.limit + 1  # one more than a page: whether another follows
    for _ in range(MAX_REBUILDS + 1):  # one more: this process's copy of the pull set moved
        # The copy as this read sends it: another request may refresh it meanwhile.
        known, members = celebrities.version, celebrities.members
        guessed = celebrities.followed_by(me)
        feed = Window(feed_key(me), cursor, want)
        windows = [feed, *(Window(posts_key(author), cursor, want) for author in guessed)]
        version, following, *replies = store.run(
            [
                celebrities.version_command(),
                ("SMISMEMBER", following_key(me), SENTINEL, *members),
                *(command for window in windows for command in window.commands()),
            ],
            client=client,
        )
        if version is None or version != known:
            if not celebrities.refresh(store.redis):
                rebuild_celebrities(store)
                celebrities.refresh(store.redis)
                rebuilt.append("celebs")
            client = store.redis
            continue
        shares = _split(replies, windows)
        feed_ids = feed.settle(store, client, feed.ids(shares[0]))
        missing = [
            kind
            for kind, gone in (("feed", feed_ids is None), ("following", not following[0]))
            if gone
        ]
        if missing:  # every missing one at once: one rebuild round
            rebuilt.extend(_rebuild_missing(store, me, kind) for kind in missing)
            client = store.redis
            continue
        followed = tuple(
            a for a, is_member in zip(members, following[1:], strict=True) if is_member
        )
        celebrities.remember(me, followed)
        pulled: set[int] = set()
        if followed:
            if followed == guessed:
                pulled, missing = _pulled_ids(store, client, guessed, windows[1:], shares[1:])
            else:
                pulled, missing = _pulled_posts(store, client, cursor, feed_ids, followed)
            if missing:
                for author in missing:
                    rebuild_posts(store, int(author))
                rebuilt.append("posts")
                client = store.redis
                continue
        ids = sorted(pulled.union(feed_ids), reverse=True)[:want] if pulled else feed_ids
        page_ids = [str(i) for i in ids[: cursor.limit]]
        commands = [("HMGET", post_key(i), "json", "up", "down") for i in page_ids]
        commands.append(("HMGET", my_votes_key(me), SENTINEL, *page_ids))
        *posts, (sentinel, *votes) = store.run(commands, client=client)
        if sentinel is None:
            rebuilt.append(_rebuild_missing(store, me, "myvotes"))
            client = store.redis
            continue
        rows = [(i, *post, vote) for i, post, vote in zip(page_ids, posts, votes, strict=True)]
        page = _assemble(store, rows, len(ids) > cursor.limit, with_vote=True, home_of=me)
        if page.dropped and not refilled:  # read again: the gone posts left the feed
            refilled, client = True, store.redis
            continue
        page.rebuilt = rebuilt
        return page
    raise DependencyDown("The feed could not be read; retry shortly.")


def _pulled_posts(
    store: Store,
    client: Any,
    cursor: Cursor,
    feed_ids: list[int],
    authors: Sequence[str],
) -> tuple[set[int], list[str]]:
    """The newest posts in the cursor's window of the pulled accounts the reader follows,
    each from its author's slot; and the authors whose list is missing."""
    want = cursor.limit + 1
    # A pulled post older than the feed's own (limit + 1)-th entry cannot make this page.
    ceiling = score_of(feed_ids[cursor.limit]) if len(feed_ids) > cursor.limit else None
    windows = [Window(posts_key(author), cursor, want, ceiling) for author in authors]
    replies = store.run(
        [command for window in windows for command in window.commands()], client=client
    )
    return _pulled_ids(store, client, authors, windows, _split(replies, windows))


def _pulled_ids(
    store: Store,
    client: Any,
    authors: Sequence[str],
    windows: Sequence[Window],
    shares: Sequence[list[Any]],
) -> tuple[set[int], list[str]]:
    """The post ids of the pulled accounts' windows; and the accounts whose list is missing."""
    pulled: set[int] = set()
    missing = []
    for author, window, share in zip(authors, windows, shares, strict=True):
        ids = window.settle(store, client, window.ids(share))
        if ids is None:
            missing.append(author)
        else:
            pulled.update(ids)
    return pulled, missing


def account_posts(
    store: Store,
    account_id: int,
    viewer: int | None,
    cursor: Cursor,
    *,
    position: int | None = None,
    wait: bool = True,
) -> Page:
    """One account's published posts, newest first: the window from the account's slot, then
    the posts' hashes and the viewer's votes."""
    ensure_following(store)
    if position is not None and not wait_for_position(store, position, wait=wait):
        return _account_posts_from_db(store, account_id, viewer, cursor)
    client = store.redis if position is not None else store.replica
    rebuilt: list[str] = []
    refilled = False
    for _ in range(MAX_REBUILDS):
        window = Window(posts_key(account_id), cursor, cursor.limit + 1)
        known, *replies = store.run(
            [("HEXISTS", account_key(account_id), "json"), *window.commands()], client=client
        )
        if not known:
            if not _cache_account(store, account_id):
                raise NotFound("No such account.")
            rebuilt.append("account")
            client = store.redis
            continue
        ids = window.settle(store, client, window.ids(replies))
        if ids is None:
            rebuild_posts(store, account_id)
            rebuilt.append("posts")
            client = store.redis
            continue
        page_ids = [str(i) for i in ids[: cursor.limit]]
        commands = [("HMGET", post_key(i), "json", "up", "down") for i in page_ids]
        if viewer is not None:
            commands.append(("HMGET", my_votes_key(viewer), SENTINEL, *page_ids))
        replies = store.run(commands, client=client)
        votes: list[Any] = [None] * len(page_ids)
        if viewer is not None:
            sentinel, *votes = replies.pop()
            if sentinel is None:
                rebuild_my_votes(store, viewer)
                rebuilt.append("myvotes")
                client = store.redis
                continue
        rows = [(i, *post, vote) for i, post, vote in zip(page_ids, replies, votes, strict=True)]
        page = _assemble(
            store, rows, len(ids) > cursor.limit, with_vote=viewer is not None, posts_of=account_id
        )
        if page.dropped and not refilled:  # read again: the gone posts left the list
            refilled, client = True, store.redis
            continue
        page.rebuilt = rebuilt
        return page
    raise DependencyDown("The posts could not be read; retry shortly.")


def get_post(
    store: Store,
    post_id: int,
    viewer: int | None,
    *,
    position: int | None = None,
    wait: bool = True,
) -> Item:
    """One published post with its current counts (and the viewer's vote): one round trip."""
    ensure_following(store)
    if position is not None and not wait_for_position(store, position, wait=wait):
        posts = _posts_from_db(store, [post_id], viewer)
        if not posts:
            raise NotFound("No such post.")
        return Item(posts[0], WRITE_MODEL)
    client = store.redis if position is not None else store.replica
    for _ in range(MAX_REBUILDS):
        commands = [("HMGET", post_key(post_id), "json", "up", "down")]
        if viewer is not None:
            commands.append(("HMGET", my_votes_key(viewer), SENTINEL, post_id))
        replies = store.run(commands, client=client)
        document, up, down = replies[0]
        vote = None
        if viewer is not None:
            sentinel, vote = replies[1]
            if sentinel is None:
                rebuild_my_votes(store, viewer)
                client = store.redis
                continue
        if document is None:
            if store.misses.known("post", post_id):
                raise NotFound("No such post.")
            status = cache_posts(store, [post_id]).get(post_id)
            if status != "published":
                if status != "pending":  # a pending post may be published any moment
                    store.misses.remember("post", post_id)
                raise NotFound("No such post.")
            client = store.redis
            continue
        return Item(render_post(document, up, down, None if viewer is None else _vote_of(vote)))
    raise DependencyDown("The post could not be read; retry shortly.")


def get_account(
    store: Store, account_id: int, *, position: int | None = None, wait: bool = True
) -> Item:
    """An account's profile with its followers, following and posts counts."""
    ensure_following(store)
    if position is not None and not wait_for_position(store, position, wait=wait):
        return Item(_account_from_db(store, account_id), WRITE_MODEL)
    client = store.redis if position is not None else store.replica
    for _ in range(MAX_REBUILDS):
        document, followers, following, posts = client.hmget(
            account_key(account_id), "json", "followers", "following", "posts"
        )
        if document is None or followers is None:
            if not _cache_account(store, account_id):
                raise NotFound("No such account.")
            client = store.redis
            continue
        account = json.loads(document)
        account.update(
            followers_count=int(followers), following_count=int(following), posts_count=int(posts)
        )
        return Item(account)
    raise DependencyDown("The account could not be read; retry shortly.")


def _cache_account(store: Store, account_id: int) -> bool:
    """Cache the account from PostgreSQL, unless it was unknown a moment ago; False if it is
    unknown (or deleted)."""
    if store.misses.known("account", account_id):
        return False
    if cache_account(store, account_id):
        return True
    store.misses.remember("account", account_id)
    return False


# --- assembling answers -------------------------------------------------------------------


def _vote_of(reply: bytes | None) -> int:
    """The viewer's vote from its read-model entry (``value:version``), 0 for none."""
    return int(reply.split(b":")[0]) if reply else 0


def render_page(page: Page) -> bytes:
    """The JSON of a page of posts, joined from the posts' rendered JSON."""
    next_max_id = b'"%s"' % page.next_max_id.encode() if page.next_max_id else b"null"
    return b'{"items":[' + b",".join(page.items) + b'],"next_max_id":' + next_max_id + b"}"


def _assemble(
    store: Store,
    rows: list[Row],
    more: bool,
    *,
    with_vote: bool,
    home_of: int | None = None,
    posts_of: int | None = None,
) -> Page:
    """Render a page's posts; posts missing from the cache are loaded from PostgreSQL, and
    those no longer published leave the list they were read from."""
    missing = [int(row[0]) for row in rows if row[1] is None]
    refreshed: dict[int, list[Any]] = {}
    if missing:
        statuses = cache_posts(store, missing)
        published = [post_id for post_id, status in statuses.items() if status == "published"]
        gone = [m for m in missing if m not in published]
        if gone:
            for key in filter(
                None, (home_of and feed_key(home_of), posts_of and posts_key(posts_of))
            ):
                store.run([remove_from(store, key, gone)])
        replies = store.run([("HMGET", post_key(p), "json", "up", "down") for p in published])
        refreshed = dict(zip(published, replies, strict=True))
    items = []
    for post_id, document, up, down, vote in rows:
        if document is None:
            # Not published any more; or lost again between its caching and this read (Redis
            # flushed or restarted in between): left out of this page, cached by the next read.
            document, up, down = refreshed.get(int(post_id)) or (None, None, None)
            if document is None:
                continue
        items.append(render_post(document, up, down, _vote_of(vote) if with_vote else None))
    next_max_id = rows[-1][0] if more and rows else None
    return Page(items, next_max_id, dropped=len(items) < len(rows))


def _rebuild_missing(store: Store, me: int, kind: str) -> str:
    if kind == "feed":
        rebuild_feed(store, me)
    elif kind == "following":
        rebuild_following(store, me)
    elif kind == "myvotes":
        rebuild_my_votes(store, me)
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
        vote = votes.get(row["id"], 0) if viewer is not None else None
        out.append(render_post(post_document_of(row), row["up"], row["down"], vote))
    return out


def _page_from_db(
    store: Store, ids_of: Callable[[Connection, int], list[int]], viewer: int | None, limit: int
) -> Page:
    """A page from the write model: ``ids_of`` gives a feed's newest ids (from
    ``store.sources``, the definition its rebuild uses too), one more than the page."""
    with store.engine.connect() as conn:
        ids = ids_of(conn, limit + 1)
    more = len(ids) > limit
    ids = ids[:limit]
    items = _posts_from_db(store, ids, viewer)
    return Page(items, str(ids[-1]) if more and ids else None, WRITE_MODEL)


def _home_timeline_from_db(store: Store, me: int, cursor: Cursor) -> Page:
    def ids_of(db: Connection, n: int) -> list[int]:
        return store.sources.home(db, me, n, max_id=cursor.max_id, since_id=cursor.since_id)

    return _page_from_db(store, ids_of, me, cursor.limit)


def _account_posts_from_db(
    store: Store, account_id: int, viewer: int | None, cursor: Cursor
) -> Page:
    _account_from_db(store, account_id)  # 404 for an unknown account

    def ids_of(db: Connection, n: int) -> list[int]:
        return store.sources.authored(
            db, account_id, n, max_id=cursor.max_id, since_id=cursor.since_id
        )

    return _page_from_db(store, ids_of, viewer, cursor.limit)


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
