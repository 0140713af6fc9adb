"""Projections: outbox events into the Redis read model. Plain functions; the Dramatiq actors in
``workers/`` only decode a message and call them.

Every handler is safe to run twice and in any order (the line under each says how), so a
redelivered, duplicated or reordered message leaves the same read model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import text

from feed.events import (
    AccountDeleted,
    AccountFollowed,
    AccountRegistered,
    AccountUnfollowed,
    Event,
    PostDeleted,
    PostPublished,
    VoteCast,
)
from feed.outbox import Envelope
from feed.readmodel import (
    APPLIED_SECONDS,
    CELEBS_KEY,
    TOMBSTONE_SECONDS,
    Store,
    account_document,
    account_key,
    applied_key,
    feed_key,
    follow_versions_key,
    following_key,
    my_votes_key,
    post_document,
    post_key,
    posts_key,
    score_of,
    tombstone_key,
)
from feed.rebuild import rebuild_posts

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class FanOutPage:
    """One page of followers to add a post to, or remove posts from. One message each."""

    op: str  # "add" | "remove" | "merge_author"
    author_id: int
    follower_ids: tuple[int, ...]
    post_ids: tuple[int, ...] = ()

    def to_message(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "author_id": self.author_id,
            "follower_ids": list(self.follower_ids),
            "post_ids": [str(p) for p in self.post_ids],
        }

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> FanOutPage:
        return cls(
            op=data["op"],
            author_id=int(data["author_id"]),
            follower_ids=tuple(int(f) for f in data["follower_ids"]),
            post_ids=tuple(int(p) for p in data["post_ids"]),
        )


SendPage = Callable[[FanOutPage], None]


def project(store: Store, envelope: Envelope, send_page: SendPage) -> None:
    """Apply one event to every read model it touches, then mark its position applied."""
    event = envelope.event()
    HANDLERS[type(event)](store, event, send_page)
    mark_applied(store, [envelope.position])


def project_account_registered(store: Store, event: AccountRegistered, send: SendPage) -> None:
    # Safe twice: the profile is the same every time; counters apply only when newer.
    store.redis.hset(
        account_key(event.account_id),
        "json",
        account_document(
            account_id=event.account_id,
            handle=event.handle,
            display_name=event.display_name,
            created_at=event.created_at,
        ),
    )
    _apply_counts(
        store,
        event.account_id,
        {"followers_count": 0, "following_count": 0, "posts_count": 0, "counts_version": 0},
        send,
    )


def project_post_published(store: Store, event: PostPublished, send: SendPage) -> None:
    (projected,) = project_posts_published(store, [event])
    for page in projected.pages:
        send(page)


@dataclass(frozen=True)
class PostProjected:
    """What projecting one published post did: the followers whose feeds it was written to at
    once (``0`` unless the author has followers, fewer than a page), how many feeds that
    changed, and the pages left for ``fan_out_page`` messages (an author with more followers
    than a page; an author who just left the high-follower set)."""

    followers: int = 0
    changed: int = 0
    pages: tuple[FanOutPage, ...] = ()


def project_posts_published(store: Store, events: Sequence[PostPublished]) -> list[PostProjected]:
    """Project published posts, a message's worth at once: one PostgreSQL query for their
    statuses and their authors' first pages of followers, one Redis pipeline for their caches,
    their authors' counters and, for authors with fewer followers than a page (nearly all),
    the fan-out itself. Returns what each post's projection did, in order.

    Safe twice: ZADD of the same member and score changes nothing; a deleted post (tombstone or
    PostgreSQL status) is never cached or added again.
    """
    settings = store.settings
    page_size = settings.fanout_page_size
    threshold = settings.feed_pull_threshold  # authors above it are pulled, not pushed
    states = _posts_state(
        store, [(int(e.post_id), e.author_counts["followers_count"] < threshold) for e in events]
    )
    pipe = store.redis.pipeline(transaction=False)
    plans: list[tuple[PostPublished, list[int] | None, bool] | None] = []
    for event in events:
        post_id = int(event.post_id)
        published, first_page = states[post_id]
        if not published:
            pipe.set(tombstone_key(post_id), 1, ex=TOMBSTONE_SECONDS)
            plans.append(None)
            continue
        store.scripts.cache_published_post(
            keys=[
                post_key(post_id),
                tombstone_key(post_id),
                posts_key(event.author_id),
                feed_key(event.author_id),
                account_key(event.author_id),
                CELEBS_KEY,
            ],
            args=[
                post_document(
                    post_id=post_id,
                    author_id=event.author_id,
                    author_handle=event.author_handle,
                    author_display_name=event.author_display_name,
                    body=event.body,
                    media=event.media,
                    created_at=event.created_at,
                ),
                post_id,
                score_of(post_id),
                settings.feed_size,
                *_counts_args(store, event.author_id, event.author_counts),
            ],
            client=pipe,
        )
        # The whole fan-out is in the first page: write it now, followers just read.
        at_once = first_page is not None and 0 < len(first_page) < page_size
        if at_once:
            store.scripts.add_to_feeds(
                keys=[feed_key(f) for f in first_page],
                args=[post_id, score_of(post_id), settings.feed_size, tombstone_key(post_id)],
                client=pipe,
            )
        plans.append((event, first_page, at_once))
    answers = iter(pipe.execute())
    projected = []
    for plan in plans:
        counted = next(answers)  # the tombstone's SET, or the cache script's counters
        if plan is None:
            projected.append(PostProjected())
            continue
        event, first_page, at_once = plan
        pages: list[FanOutPage] = []
        _after_counts(store, event.author_id, counted, pages.append)
        if at_once:
            projected.append(PostProjected(len(first_page), int(next(answers)), tuple(pages)))
            continue
        if first_page:  # a full first page: more may follow, a message per page
            author_id, post_ids = int(event.author_id), (int(event.post_id),)
            for followers in follower_pages(store, author_id, first=first_page):
                pages.append(FanOutPage("add", author_id, followers, post_ids))
        projected.append(PostProjected(pages=tuple(pages)))
    return projected


def mark_applied(store: Store, positions: Sequence[int]) -> None:
    """Mark outbox positions applied to the read model (a consistency token's wait ends)."""
    pipe = store.redis.pipeline(transaction=False)
    for position in positions:
        pipe.set(applied_key(position), 1, ex=APPLIED_SECONDS)
    pipe.execute()


def project_post_deleted(store: Store, event: PostDeleted, send: SendPage) -> None:
    # Safe twice: tombstone, DEL and ZREM are idempotent; counters apply only when newer.
    post_id = int(event.post_id)
    pipe = store.redis.pipeline(transaction=True)
    pipe.set(tombstone_key(post_id), 1, ex=TOMBSTONE_SECONDS)
    pipe.delete(post_key(post_id))
    pipe.zrem(posts_key(event.author_id), post_id)
    pipe.zrem(feed_key(event.author_id), post_id)
    pipe.execute()
    _apply_counts(store, event.author_id, event.author_counts, send)
    for followers in follower_pages(store, int(event.author_id)):
        send(FanOutPage("remove", int(event.author_id), followers, (post_id,)))


def project_account_followed(store: Store, event: AccountFollowed, send: SendPage) -> None:
    # Safe twice and reordered: the edge applies only when its version is newer than the last
    # one seen for the pair; merging the same posts again adds nothing.
    _apply_counts(store, event.follower_id, event.follower_counts, send)
    _apply_counts(store, event.followee_id, event.followee_counts, send)
    applied = store.scripts.apply_follow_edge(
        keys=[following_key(event.follower_id), follow_versions_key(event.follower_id)],
        args=[event.followee_id, event.follower_counts["counts_version"], 1],
    )
    if applied:
        _ensure_posts(store, event.followee_id)
        store.scripts.merge_posts_into_feed(
            keys=[feed_key(event.follower_id), posts_key(event.followee_id)],
            args=[store.settings.feed_size],
        )


def project_account_unfollowed(store: Store, event: AccountUnfollowed, send: SendPage) -> None:
    # Safe twice and reordered: as for follows, by the edge version; removing is idempotent.
    _apply_counts(store, event.follower_id, event.follower_counts, send)
    _apply_counts(store, event.followee_id, event.followee_counts, send)
    applied = store.scripts.apply_follow_edge(
        keys=[following_key(event.follower_id), follow_versions_key(event.follower_id)],
        args=[event.followee_id, event.follower_counts["counts_version"], 0],
    )
    if applied:
        _ensure_posts(store, event.followee_id)
        store.scripts.unmerge_posts_from_feed(
            keys=[feed_key(event.follower_id), posts_key(event.followee_id)]
        )


def project_vote_cast(store: Store, event: VoteCast, send: SendPage) -> None:
    # Safe twice and reordered: the post's counts and the voter's vote carry votes_version and
    # only a newer version replaces them; nothing is incremented.
    store.scripts.apply_vote(
        keys=[
            post_key(event.post_id),
            my_votes_key(event.account_id),
            tombstone_key(event.post_id),
        ],
        args=[event.up, event.down, event.votes_version, event.post_id, event.value],
    )


def project_account_deleted(store: Store, event: AccountDeleted, send: SendPage) -> None:
    # Safe twice: deleting keys that are gone changes nothing.
    store.redis.delete(
        account_key(event.account_id),
        posts_key(event.account_id),
        feed_key(event.account_id),
        following_key(event.account_id),
        follow_versions_key(event.account_id),
        my_votes_key(event.account_id),
    )
    store.redis.srem(CELEBS_KEY, event.account_id)


HANDLERS: dict[type[Event], Callable[[Store, Any, SendPage], None]] = {
    AccountDeleted: project_account_deleted,
    AccountRegistered: project_account_registered,
    PostPublished: project_post_published,
    PostDeleted: project_post_deleted,
    AccountFollowed: project_account_followed,
    AccountUnfollowed: project_account_unfollowed,
    VoteCast: project_vote_cast,
}


def apply_fan_out_page(store: Store, page: FanOutPage, *, just_read: bool = False) -> int:
    """Apply one page of fan-out in one Redis script call; returns the entries changed.

    Safe twice: adding or removing the same members again changes nothing. Before adding, the
    followers are checked against PostgreSQL once, so a page that arrives after an unfollow
    does not put the post back; ``just_read`` skips that for a page the caller has read from
    PostgreSQL a moment ago (the projecting worker applying a single page itself).
    """
    if page.op == "remove":
        return int(
            store.scripts.remove_from_feeds(
                keys=[feed_key(f) for f in page.follower_ids], args=list(page.post_ids)
            )
        )
    followers = (
        list(page.follower_ids)
        if just_read
        else still_following(store, page.author_id, page.follower_ids)
    )
    if not followers:
        return 0
    if page.op == "merge_author":
        _ensure_posts(store, page.author_id)
        pipe = store.redis.pipeline(transaction=False)
        for follower in followers:
            store.scripts.merge_posts_into_feed(
                keys=[feed_key(follower), posts_key(page.author_id)],
                args=[store.settings.feed_size],
                client=pipe,
            )
        return sum(int(n) for n in pipe.execute())
    changed = 0
    for post_id in page.post_ids:
        changed += int(
            store.scripts.add_to_feeds(
                keys=[feed_key(f) for f in followers],
                args=[post_id, score_of(post_id), store.settings.feed_size, tombstone_key(post_id)],
            )
        )
    return changed


# A page of followers comes back as one int8[] value (decoded in C), not as a row per follower.
_FOLLOWER_PAGE = (
    "ARRAY(SELECT f.follower_id FROM follows f WHERE f.followee_id = {author} "
    "AND f.follower_id > :after ORDER BY f.follower_id LIMIT :n)"
)
FOLLOWER_PAGE = text("SELECT " + _FOLLOWER_PAGE.format(author=":author"))
# Posts' statuses and, where asked, their authors' first pages of followers: one round trip for
# a message's posts. A post not in PostgreSQL comes back unpublished.
POSTS_STATE = text(
    "SELECT x.id, p.status IS NOT DISTINCT FROM 'published' AS published, "
    "CASE WHEN x.with_followers THEN "
    + _FOLLOWER_PAGE.format(author="p.author_id")
    + " END AS followers FROM unnest(CAST(:ids AS int8[]), CAST(:with_followers AS bool[]))"
    " AS x(id, with_followers) LEFT JOIN posts p ON p.id = x.id"
)
STILL_FOLLOWING = text(
    "SELECT follower_id FROM follows WHERE followee_id = :author AND follower_id = ANY(:ids)"
)


def follower_pages(
    store: Store, author_id: int, *, first: list[int] | None = None
) -> Iterator[tuple[int, ...]]:
    """The author's followers from PostgreSQL, a page (``fanout_page_size``) at a time;
    ``first`` is the first page when the caller has read it already (``_posts_state``)."""
    size = store.settings.fanout_page_size
    if first is not None:
        if first:
            yield tuple(first)
        if len(first) < size:
            return
    after = first[-1] if first else 0
    with store.reader.connect() as conn:
        while True:
            page = conn.execute(
                FOLLOWER_PAGE, {"author": author_id, "after": after, "n": size}
            ).scalar_one()
            if not page:
                return
            yield tuple(page)
            if len(page) < size:
                return
            after = page[-1]


def still_following(store: Store, author_id: int, follower_ids: tuple[int, ...]) -> list[int]:
    """The subset of ``follower_ids`` that follow ``author_id`` now."""
    with store.reader.connect() as conn:
        return list(
            conn.execute(
                STILL_FOLLOWING, {"author": author_id, "ids": list(follower_ids)}
            ).scalars()
        )


def projection_lag_seconds(created_at: str) -> float:
    """Seconds from an event's time (RFC 3339) to now."""
    created = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    return max(0.0, time.time() - created.timestamp())


def _counts_args(store: Store, account_id: str | int, counts: dict[str, int]) -> list[Any]:
    """The arguments of the scripts' ``apply_counts``."""
    return [
        counts["followers_count"],
        counts["following_count"],
        counts["posts_count"],
        counts["counts_version"],
        account_id,
        store.settings.feed_pull_threshold,
    ]


def _apply_counts(
    store: Store, account_id: str | int, counts: dict[str, int], send: SendPage
) -> None:
    result = store.scripts.apply_account_counts(
        keys=[account_key(account_id), CELEBS_KEY], args=_counts_args(store, account_id, counts)
    )
    _after_counts(store, account_id, result, send)


def _after_counts(store: Store, account_id: str | int, result: Any, send: SendPage) -> None:
    """What ``apply_counts`` answered: -1 is an account that just left the celebrities."""
    if int(result) == -1:
        # The account left the high-follower set: push its posts to its followers' feeds now.
        log.info("account_demoted_from_pull", account_id=str(account_id))
        for followers in follower_pages(store, int(account_id)):
            send(FanOutPage("merge_author", int(account_id), followers))


def _ensure_posts(store: Store, account_id: str | int) -> None:
    if not store.redis.exists(posts_key(account_id)):
        rebuild_posts(store, int(account_id))


def _posts_state(
    store: Store, posts: Sequence[tuple[int, bool]]
) -> dict[int, tuple[bool, list[int] | None]]:
    """For each ``(post_id, with_followers)``: whether the post is published in PostgreSQL
    and, if asked, its author's first page of followers (``None`` when not asked). One query."""
    with store.reader.connect() as conn:
        rows = conn.execute(
            POSTS_STATE,
            {
                "ids": [post_id for post_id, _ in posts],
                "with_followers": [asked for _, asked in posts],
                "after": 0,
                "n": store.settings.fanout_page_size,
            },
        ).all()
    return {row.id: (bool(row.published), row.followers) for row in rows}
