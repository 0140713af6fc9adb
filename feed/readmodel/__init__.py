"""The Redis read model: what its values hold, how a post id becomes a score, and the ``Store``
the projections and queries work with. Keys are spelled in ``feed/keys.py``; the functions that
change them are in ``feed/lua/feed.lua``, loaded by ``feed/functions.py``.

Every sorted set and set that is rebuilt lazily carries the sentinel member ``"0"``: its presence
says "this key is complete", so an empty feed is told apart from a missing one. In a sorted set
its score (1) is above every post's, so it is always the last member.

Scores: a sorted-set score is a double, and post ids pass 2^53, so the score is built from the
id's millisecond part (``id >> 22``, exact in a double); ties within one millisecond are ordered
by the member, the id as a decimal string (ids of one millisecond have the same number of
digits, so string order is number order). Members that are integers are stored as integers in a
listpack, which keeps a feed entry near 20 bytes.

The score is *minus* the millisecond: the newest post has the lowest score, so it is the first
member. A listpack is one array that ``ZADD`` scans from its head for the insertion point; a new
post, newer than the feed, is found a place at once instead of after walking the whole feed, and
trimming the oldest cuts the tail instead of moving every entry (``docs/performance.md``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import Engine

from feed.config import Settings
from feed.expiring import Expiring
from feed.functions import Functions
from feed.keys import CELEBS_KEY, list_keys
from feed.readmodel.sources import FeedSources

SENTINEL = "0"
SENTINEL_SCORE = 1
ID_SHIFT = 22
TOMBSTONE_SECONDS = 7 * 24 * 3600
APPLIED_SECONDS = 24 * 3600
# A feed page and a capped feed both stay in one listpack below this many entries.
LISTPACK_ENTRIES = 1024


def score_of(post_id: int | str) -> int:
    """The sorted-set score of a post id: minus its millisecond timestamp (exact in a double),
    so the newest post is a set's first member."""
    return -(int(post_id) >> ID_SHIFT)


class FeedKeepAlive:
    """When this process last refreshed each account's feed lifetime, so that an account's
    requests refresh it (a Redis ``EXPIRE``) at most once per ``interval_s``, not on each one.

    A feed lives for days without its owner (``feed_ttl_seconds``), so a refresh a minute late
    changes nothing. Bounded: forgets everything past ``max_accounts`` (the next request of each
    refreshes again).
    """

    def __init__(self, interval_s: float = 60.0, max_accounts: int = 100_000) -> None:
        self.interval_s = interval_s
        self.max_accounts = max_accounts
        self._last: dict[int, float] = {}

    def due(self, account_id: int) -> bool:
        """True (and remembered as done now) when the account's feed should be refreshed."""
        now = time.monotonic()
        last = self._last.get(account_id)
        if last is not None and now - last < self.interval_s:
            return False
        if len(self._last) >= self.max_accounts:
            self._last.clear()
        self._last[account_id] = now
        return True


def configure_compact_encoding(client: redis.Redis | redis.RedisCluster) -> bool:
    """Let a capped feed stay a listpack (Redis 7) or ziplist (Redis 6); False if not allowed.

    Production servers should set this in their config file; this is for embedded and test ones.
    """
    # CONFIG SET reaches one node: on a cluster, send it to each
    every_node = (
        {"target_nodes": redis.RedisCluster.ALL_NODES}
        if isinstance(client, redis.RedisCluster)
        else {}
    )
    for name in ("zset-max-listpack-entries", "zset-max-ziplist-entries"):
        try:
            client.config_set(name, LISTPACK_ENTRIES, **every_node)
            return True
        except redis.ResponseError:
            continue
    return False


def post_document(
    *,
    post_id: int | str,
    author_id: int | str,
    author_handle: str,
    author_display_name: str,
    body: str,
    media: list | tuple,
    created_at: str,
    status: str = "published",
) -> str:
    """A post's JSON without its counters: what the post cache holds for a published post
    (the counters live beside it), and what ``render_post`` completes."""
    return json.dumps(
        {
            "id": str(post_id),
            "author": {
                "id": str(author_id),
                "handle": author_handle,
                "display_name": author_display_name,
            },
            "body": body,
            "media": list(media),
            "created_at": created_at,
            "status": status,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def render_post(document: bytes | str, up: Any, down: Any, my_vote: int | None) -> bytes:
    """A post's JSON, the one renderer of it (for reads from Redis or PostgreSQL, and for the
    answer to a command): its ``post_document`` with its counters, and the viewer's vote unless
    ``None``, spliced in before the closing brace. Nothing is parsed."""
    if isinstance(document, str):
        document = document.encode()
    ups, downs = int(up or 0), int(down or 0)
    counters = b',"up":%d,"down":%d,"score":%d' % (ups, downs, ups - downs)
    if my_vote is not None:
        counters += b',"my_vote":%d' % my_vote
    return document[:-1] + counters + b"}"


def account_document(
    *, account_id: int | str, handle: str, display_name: str, created_at: str
) -> str:
    """The cached JSON of an account's profile, without counters."""
    return json.dumps(
        {
            "id": str(account_id),
            "handle": handle,
            "display_name": display_name,
            "created_at": created_at,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


class Celebrities:
    """This process's copy of the pull set (``CELEBS_KEY``): the accounts whose posts a home
    feed pulls at read time. A feed read sends the copy's ids to the reader's slot and, in the
    same round trip, asks the set's ``_version``; when that moved, the copy is read again and
    the page with it (rare: an account crossing the threshold)."""

    VERSION_FIELD = "_version"

    def __init__(self, max_readers: int = 100_000) -> None:
        self.version: bytes | None = None
        self.members: tuple[str, ...] = ()
        self.max_readers = max_readers
        self._followed: dict[int, tuple[str, ...]] = {}

    def followed_by(self, reader: int) -> tuple[str, ...]:
        """The pulled accounts ``reader`` followed at its last read here (a guess, checked by
        the read: their windows go out with the first round trip)."""
        return self._followed.get(reader, ())

    def remember(self, reader: int, followed: tuple[str, ...]) -> None:
        if followed:
            if len(self._followed) >= self.max_readers:
                self._followed.clear()
            self._followed[reader] = followed
        else:
            self._followed.pop(reader, None)

    def version_command(self) -> tuple[Any, ...]:
        return ("HGET", CELEBS_KEY, self.VERSION_FIELD)

    def refresh(self, client: Any) -> bool:
        """Read the set again; False when it is missing (it must be rebuilt first)."""
        fields = client.hgetall(CELEBS_KEY)
        if not fields:
            return False
        self.version = fields.pop(self.VERSION_FIELD.encode(), None)
        self.members = tuple(
            sorted(k.decode() for k, v in fields.items() if not k.startswith(b"_") and int(v) > 0)
        )
        return True


class Misses:
    """Ids that PostgreSQL did not know (or knows deleted) a moment ago, remembered for
    ``ttl`` seconds in this process: a read of an unknown post or account asks PostgreSQL once,
    not on every read. Ids are made when their row is, so an id nobody has been given yet is
    only a guess's."""

    def __init__(self, ttl: float) -> None:
        self._missing: Expiring[tuple[str, int], bool] = Expiring(ttl)

    def known(self, kind: str, ident: int) -> bool:
        return bool(self._missing.get((kind, ident)))

    def remember(self, kind: str, ident: int) -> None:
        self._missing.put((kind, ident), True)


@dataclass
class Store:
    """What the read side works with: Redis and its functions, and PostgreSQL to rebuild from.

    ``redis`` reaches the primaries (a single node, or a cluster); ``replica`` is where reads
    that carry no consistency token go: the replicas when ``REDIS_READ_FROM_REPLICAS`` is set,
    else the same client. ``reader`` is ``engine`` in autocommit, for single reads that need
    no transaction: no ``BEGIN`` before the query and no ``ROLLBACK`` when the connection goes
    back to the pool, one round trip instead of three (it shares ``engine``'s pool).
    ``sources`` defines each feed in PostgreSQL, for rebuilds and fallbacks.
    """

    redis: Any  # redis.Redis or redis.RedisCluster
    engine: Engine
    settings: Settings
    replica: Any = None
    sources: FeedSources = field(default_factory=FeedSources)
    functions: Functions = field(init=False)
    celebrities: Celebrities = field(init=False)
    reader: Engine = field(init=False)
    # Whether this process checked that the read model follows this database (feed/origin.py).
    follows_database: bool = field(init=False, default=False)
    misses: Misses = field(init=False)

    def __post_init__(self) -> None:
        self.replica = self.replica if self.replica is not None else self.redis
        self.functions = Functions(self.redis, held=self.settings.redis_held_connections)
        self.celebrities = Celebrities()
        self.reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.misses = Misses(self.settings.miss_seconds)

    def call(self, name: str, keys: list[Any], args: list[Any] = ()) -> tuple[Any, ...]:
        """The command calling read-model function ``name`` (for ``run``)."""
        return self.functions.call(name, keys, args)

    def run(self, commands: list[tuple[Any, ...]], *, client: Any = None) -> list[Any]:
        """Send commands in one pipeline (per node on a cluster); their replies in order."""
        return self.functions.run(commands, client)

    def execute(self, command: tuple[Any, ...], *, client: Any = None) -> Any:
        """Send one command; its reply."""
        return self.functions.execute(command, client)

    def close(self) -> None:
        self.functions.close()
        for client in {id(self.redis): self.redis, id(self.replica): self.replica}.values():
            client.close()


def remove_from(store: Store, list_key: str, post_ids: Sequence[Any]) -> tuple[Any, ...]:
    """The command taking posts out of a list (a feed, an account's posts), and out of its
    next version when a rebuild of it is under way (``feed/lua/feed.lua``)."""
    return store.call("list_remove", list_keys(list_key), list(post_ids))
