"""Domain events: what happened, in the past tense, as frozen dataclasses with a name and version.

Every event written to the outbox is listed here; this module is the one place that documents
their fields. Ids are decimal strings (64-bit ids do not survive JSON numbers in every client),
times are RFC 3339 strings in UTC. A command builds its events from these classes, and the unit
of work (or the command's one statement) writes them to the outbox as parameters.

A post's deletion carries its author's counters with their version, so a projection can apply
them in any order and keep the newest. An account's counters always travel together
(``account_counts``), so no counter can be lost to a newer event that did not carry it. A
publication, a vote and a follow carry no counters: each is one statement that locks the author,
the post or the followee only while PostgreSQL runs it, so its event is built before the
statement, and their projections read the counters, with their versions, from PostgreSQL.

A payload written by an older version is brought up to date by the chain of ``upcast_*``
functions registered in ``UPCASTERS`` before it is decoded.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from feed.errors import UnknownEvent


@dataclass(frozen=True)
class Event:
    """Base of every event: subclasses set ``name`` and ``version``."""

    name: ClassVar[str]
    # Whether the read model projects it (and marks its position applied, which ends a
    # consistency token's wait); saga messages are not.
    projected: ClassVar[bool] = True
    version: ClassVar[int]

    @property
    def aggregate_id(self) -> str:
        """The id of the object the event is about (the outbox orders and groups by it)."""
        raise NotImplementedError

    def to_payload(self) -> dict[str, Any]:
        """The JSON object stored in the outbox (sequences as lists). Unlike
        ``dataclasses.asdict`` it does not deep-copy every value (a post's payload is built on
        every command)."""
        return _plain(self)


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready dicts and lists, sharing its immutable leaves."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if dataclasses.is_dataclass(value):
        return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


def post_author(account: Any) -> dict[str, str]:
    """An account (a row or mapping) as a post shows its author: ``PostPublished.author``."""
    return {
        "id": str(account["id"]),
        "handle": account["handle"],
        "display_name": account["display_name"],
    }


def account_counts(row: Any) -> dict[str, int]:
    """An account's counters and their version, as events carry them."""
    return {
        "followers_count": row["followers_count"],
        "following_count": row["following_count"],
        "posts_count": row["posts_count"],
        "counts_version": row["counts_version"],
    }


@dataclass(frozen=True)
class AccountRegistered(Event):
    """A new account exists."""

    name: ClassVar[str] = "AccountRegistered"
    version: ClassVar[int] = 1

    account_id: str
    handle: str
    display_name: str
    created_at: str

    @property
    def aggregate_id(self) -> str:
        return self.account_id


@dataclass(frozen=True)
class PostPublished(Event):
    """A post became visible: it goes to its author's and followers' feeds.

    ``author`` is the author as a post shows it (``id``, ``handle``, ``display_name``; version 1
    had ``author_handle`` and ``author_display_name`` beside ``author_id``, see
    ``post_published_v1_to_v2``). Version 2 also carried the author's counters after the
    publish (``drop_author_counts``): the projection reads them from PostgreSQL.
    """

    name: ClassVar[str] = "PostPublished"
    version: ClassVar[int] = 3

    post_id: str
    author_id: str
    body: str
    created_at: str
    author: dict[str, str]
    media: tuple[dict[str, Any], ...]

    @property
    def aggregate_id(self) -> str:
        return self.post_id


@dataclass(frozen=True)
class PostDeleted(Event):
    """A post was deleted: it leaves every feed and the post cache."""

    name: ClassVar[str] = "PostDeleted"
    version: ClassVar[int] = 1

    post_id: str
    author_id: str
    deleted_by: str
    deleted_at: str
    author_counts: dict[str, int]

    @property
    def aggregate_id(self) -> str:
        return self.post_id


@dataclass(frozen=True)
class AccountFollowed(Event):
    """``follower_id`` now follows ``followee_id``.

    Version 1 also carried both accounts' counters (see ``drop_follow_counts``): the
    projection reads them, and whether the follow still stands, from PostgreSQL.
    """

    name: ClassVar[str] = "AccountFollowed"
    version: ClassVar[int] = 2

    follower_id: str
    followee_id: str
    followed_at: str

    @property
    def aggregate_id(self) -> str:
        return self.follower_id


@dataclass(frozen=True)
class AccountUnfollowed(Event):
    """``follower_id`` no longer follows ``followee_id`` (version 1: as ``AccountFollowed``)."""

    name: ClassVar[str] = "AccountUnfollowed"
    version: ClassVar[int] = 2

    follower_id: str
    followee_id: str
    unfollowed_at: str

    @property
    def aggregate_id(self) -> str:
        return self.follower_id


@dataclass(frozen=True)
class VoteCast(Event):
    """An account set its vote on a post to ``value`` (1, -1, or 0 for cleared).

    Version 1 also carried the vote it replaced and the post's totals after it (see
    ``drop_vote_counts``): the projection reads the totals, their version and the account's
    vote from PostgreSQL.
    """

    name: ClassVar[str] = "VoteCast"
    version: ClassVar[int] = 2

    post_id: str
    account_id: str
    value: int

    @property
    def aggregate_id(self) -> str:
        return self.post_id


EVENT_TYPES: dict[str, type[Event]] = {
    cls.name: cls
    for cls in (
        AccountRegistered,
        PostPublished,
        PostDeleted,
        AccountFollowed,
        AccountUnfollowed,
        VoteCast,
    )
}


def register_event(cls: type[Event]) -> type[Event]:
    """Make another module's event type (the sagas') known to the outbox decoder."""
    EVENT_TYPES[cls.name] = cls
    return cls


#: (event name, version it upgrades from) -> function giving the next version's payload.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


def post_published_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 rows still in the outbox (or a broker) read as version 2: the author's
    handle and display name go into ``author``, as a post shows them."""
    upgraded = {
        k: v for k, v in payload.items() if k not in ("author_handle", "author_display_name")
    }
    upgraded["author"] = {
        "id": payload["author_id"],
        "handle": payload["author_handle"],
        "display_name": payload["author_display_name"],
    }
    return upgraded


UPCASTERS[("PostPublished", 1)] = post_published_v1_to_v2


def drop_author_counts(payload: dict[str, Any]) -> dict[str, Any]:
    """``PostPublished`` version 2 read as version 3: without the author's counters."""
    return {k: v for k, v in payload.items() if k != "author_counts"}


UPCASTERS[("PostPublished", 2)] = drop_author_counts


def drop_follow_counts(payload: dict[str, Any]) -> dict[str, Any]:
    """``AccountFollowed`` and ``AccountUnfollowed`` version 1 read as version 2: without the
    counters, which the projection takes from PostgreSQL."""
    return {k: v for k, v in payload.items() if k not in ("follower_counts", "followee_counts")}


def drop_vote_counts(payload: dict[str, Any]) -> dict[str, Any]:
    """``VoteCast`` version 1 read as version 2: without the replaced vote and the totals."""
    return {k: v for k, v in payload.items() if k in ("post_id", "account_id", "value")}


UPCASTERS[("AccountFollowed", 1)] = drop_follow_counts
UPCASTERS[("AccountUnfollowed", 1)] = drop_follow_counts
UPCASTERS[("VoteCast", 1)] = drop_vote_counts


def upcast(name: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
    """Run ``payload`` through the upcasters until it has the current version's shape."""
    cls = EVENT_TYPES.get(name)
    if cls is None:
        raise UnknownEvent(f"unknown event type {name!r}")
    while version < cls.version:
        step = UPCASTERS.get((name, version))
        if step is None:
            raise UnknownEvent(f"no upcaster for {name} v{version}")
        payload = step(payload)
        version += 1
    if version != cls.version:
        raise UnknownEvent(f"{name} v{version} is newer than this code (v{cls.version})")
    return payload


def decode(name: str, version: int, payload: dict[str, Any]) -> Event:
    """Turn a stored (name, version, payload) back into its event object."""
    cls = EVENT_TYPES.get(name)
    if cls is None:
        raise UnknownEvent(f"unknown event type {name!r}")
    data = upcast(name, version, payload)
    fields = {f.name for f in dataclasses.fields(cls)}
    # JSON has lists where the events have tuples
    values = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in data.items()
        if key in fields
    }
    return cls(**values)


@dataclass(frozen=True)
class AccountDeleted(Event):
    """An account was erased: every read-model key of it goes."""

    name: ClassVar[str] = "AccountDeleted"
    version: ClassVar[int] = 1

    account_id: str

    @property
    def aggregate_id(self) -> str:
        return self.account_id


register_event(AccountDeleted)


@dataclass(frozen=True)
class PostPlaced(Event):
    """A post was placed in these accounts' home feeds by something other than a follow (a
    promotion). The placement is in PostgreSQL, in a feed source registered with
    ``feed.rebuild``, so rebuilt feeds hold it too."""

    name: ClassVar[str] = "PostPlaced"
    version: ClassVar[int] = 1

    post_id: str
    account_ids: tuple[str, ...]

    @property
    def aggregate_id(self) -> str:
        return self.post_id


register_event(PostPlaced)


@dataclass(frozen=True)
class PostUnplaced(Event):
    """A placement was withdrawn: the post leaves those feeds, unless their owner follows its
    author or it is placed there still."""

    name: ClassVar[str] = "PostUnplaced"
    version: ClassVar[int] = 1

    post_id: str
    author_id: str
    account_ids: tuple[str, ...]

    @property
    def aggregate_id(self) -> str:
        return self.post_id


register_event(PostUnplaced)
