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
    PostPlaced,
    PostPublished,
    PostUnplaced,
    VoteCast,
)
from feed.keys import (
    CELEBS_KEY,
    ORIGIN_KEY,
    account_key,
    applied_key,
    feed_key,
    follow_versions_key,
    following_key,
    list_keys,
    my_votes_key,
    next_key,
    post_key,
    posts_key,
    tombstone_key,
)
from feed.outbox import Envelope
from feed.readmodel import (
    APPLIED_SECONDS,
    ID_SHIFT,
    Store,
    post_document,
    remove_from,
    score_of,
)
from feed.rebuild import (
    COUNTS,
    UNPUBLISHED,
    account_row,
    account_row_commands,
    delete_command,
)

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

# A deleted account leaves the pull set for good: no late counts event is newer than this.
DELETED_VERSION = 2**53 - 1
# What ``apply_counts`` answers (feed/lua/feed.lua): the pull set's change it calls for.
STALE, UNCHANGED, JOINED, LEFT, LEFT_IF_LISTED = 0, 1, 2, 3, 4


def project(store: Store, envelope: Envelope, send_page: SendPage) -> None:
    """Apply one event to every read model it touches, then mark its position applied."""
    event = envelope.event()
    HANDLERS[type(event)](store, event, send_page)
    mark_applied(store, [envelope.position])


def project_account_registered(store: Store, event: AccountRegistered, send: SendPage) -> None:
    # Safe twice, and late: the profile and its counters are PostgreSQL's now, not the event's
    # zeros, which after Redis lost its data would hide the counts projected before the loss.
    with store.reader.connect() as conn:
        row = account_row(conn, int(event.account_id))
    if row is None or row["status"] == "deleted":
        return  # its deletion is projected (or was) and leaves nothing
    *_, answer = store.run(account_row_commands(store, row))
    counts = {name: row[name] for name in COUNTS}
    _after_counts(store, event.account_id, counts, answer, send)


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


@dataclass
class _Plan:
    """One published post of a batch: where its commands' replies are, whom it reached."""

    event: PostPublished
    counts: dict[str, int]
    first_page: list[int] | None
    at_once: bool
    replies: slice


def project_posts_published(store: Store, events: Sequence[PostPublished]) -> list[PostProjected]:
    """Project published posts, a message's worth at once: one PostgreSQL query for their
    statuses, their authors' counters (the event carries none) and first pages of followers,
    one Redis pipeline for their caches, their authors' counters and lists and, for authors
    with fewer followers than a page (nearly all), the fan-out itself: one single-slot write
    per feed. Then one more round trip checks
    that no post was deleted meanwhile (its tombstone); one that was leaves every feed again.
    Returns what each post's projection did, in order.

    Safe twice: ZADD of the same member and score changes nothing; a deleted post (tombstone or
    PostgreSQL status) is never cached or added again.
    """
    settings = store.settings
    page_size = settings.fanout_page_size
    states = _posts_state(store, [(int(e.post_id), True) for e in events])
    commands: list[tuple[Any, ...]] = []
    plans: list[_Plan | None] = []
    for event in events:
        post_id, author_id = int(event.post_id), int(event.author_id)
        state = states[post_id]
        first_page = state.followers
        if not state.published:
            if state.status in (None, "deleted"):  # a tombstone is final: deleted posts only
                commands.append(delete_command(store, post_id))
            plans.append(None)
            continue
        # The whole fan-out is in the first page: write it now, followers just read.
        at_once = first_page is not None and 0 < len(first_page) < page_size
        start = len(commands)
        commands += [
            store.call(
                "cache_post",
                [post_key(post_id), tombstone_key(post_id)],
                [_document_of(event), state.up, state.down, state.votes_version],
            ),
            _counts_call(store, author_id, _counts_of(state)),
            store.call(
                "author_add",
                [*list_keys(posts_key(author_id)), *list_keys(feed_key(author_id))],
                [post_id, score_of(post_id), settings.feed_size],
            ),
        ]
        if at_once:
            commands += feed_adds(store, first_page, post_id)
        plans.append(
            _Plan(event, _counts_of(state), first_page, at_once, slice(start, len(commands)))
        )
    answers = store.run(commands)
    written = [plan for plan in plans if plan is not None]
    _remove_if_deleted(
        store,
        {
            int(plan.event.post_id): [
                posts_key(plan.event.author_id),
                feed_key(plan.event.author_id),
                *(feed_key(f) for f in (plan.first_page if plan.at_once else ())),
            ]
            for plan in written
        },
    )
    projected = []
    for plan in plans:
        if plan is None:
            projected.append(PostProjected())
            continue
        event, replies = plan.event, answers[plan.replies]
        pages: list[FanOutPage] = []
        _after_counts(store, event.author_id, plan.counts, replies[1], pages.append)
        if plan.at_once:
            changed = sum(int(n) for n in replies[3:])
            projected.append(PostProjected(len(plan.first_page), changed, tuple(pages)))
            continue
        if plan.first_page:  # a full first page: more may follow, a message per page
            author_id, post_ids = int(event.author_id), (int(event.post_id),)
            for followers in follower_pages(store, author_id, first=plan.first_page):
                pages.append(FanOutPage("add", author_id, followers, post_ids))
        projected.append(PostProjected(pages=tuple(pages)))
    return projected


def mark_applied(store: Store, positions: Sequence[int]) -> None:
    """Mark outbox positions applied to the read model (a consistency token's wait ends), and
    keep the highest in the read model's origin."""
    if not positions:
        return
    store.run(
        [
            *(("SET", applied_key(p), 1, "EX", APPLIED_SECONDS) for p in positions),
            store.call("note_applied", [ORIGIN_KEY], [max(positions)]),
        ]
    )


def project_post_deleted(store: Store, event: PostDeleted, send: SendPage) -> None:
    # Safe twice: tombstone, DEL and ZREM are idempotent; counters apply only when newer.
    # The tombstone comes first: a fan-out that checks it after writing takes the post back.
    post_id, author_id = int(event.post_id), int(event.author_id)
    store.execute(delete_command(store, post_id))
    *_, answer = store.run(
        [
            remove_from(store, posts_key(author_id), [post_id]),
            remove_from(store, feed_key(author_id), [post_id]),
            _counts_call(store, author_id, event.author_counts),
        ]
    )
    _after_counts(store, author_id, event.author_counts, answer, send)
    for followers in follower_pages(store, author_id):
        send(FanOutPage("remove", author_id, followers, (post_id,)))


def project_follow(
    store: Store, event: AccountFollowed | AccountUnfollowed, send: SendPage
) -> None:
    """A follow or an unfollow: the pair's edge, both accounts' counters and the follower's feed
    as PostgreSQL has them now (the events carry none of it: see ``feed.events``).

    Safe twice, reordered and late: the edge applies only when the follower's counts version
    read with it is not older than the last one seen for the pair (the version moves with every
    follow and unfollow of the follower; the same version again redoes the feed work of a
    delivery that died), and merging or removing the same posts again changes nothing. An event
    whose follow was undone since projects the undoing. A deleted follower's keys went with its
    deletion: only the followee's counters are applied."""
    follower, followee = int(event.follower_id), int(event.followee_id)
    with store.reader.connect() as conn:
        rows = {row.id: row for row in conn.execute(FOLLOW_STATE, {"a": follower, "b": followee})}
    counted = [rows[a] for a in (follower, followee) if a in rows and rows[a].status != "deleted"]
    edge = follower in rows and rows[follower].status != "deleted"
    commands = [_counts_call(store, row.id, _counts_of(row)) for row in counted]
    if not counted:
        return
    if edge:
        commands.append(
            store.call(
                "apply_follow_edge",
                [following_key(follower), follow_versions_key(follower)],
                [followee, rows[follower].counts_version, 1 if rows[follower].following else 0],
            )
        )
    answers = store.run(commands)
    for row, answer in zip(counted, answers, strict=False):
        _after_counts(store, row.id, _counts_of(row), answer, send)
    if not edge or not answers[-1]:
        return
    if rows[follower].following:
        merge_author_posts(store, followee, [follower])
    else:
        _remove_author_posts(store, follower, followee)


def _remove_author_posts(store: Store, follower: int, followee: int) -> None:
    """Take the followee's posts out of an unfollower's feed: those newer than the feed's
    oldest entry (the last before the sentinel), from PostgreSQL and whatever their status (a
    deletion projected first has taken its post out of the followee's list, and out of the
    feeds of those who follow the followee now, which this follower no longer does)."""
    oldest = store.redis.zrange(feed_key(follower), -2, -2, withscores=True)
    with store.reader.connect() as conn:
        if oldest:
            since = -int(oldest[0][1]) << ID_SHIFT  # the smallest id of that millisecond
            ids = conn.execute(POSTS_SINCE, {"author": followee, "since": since}).scalars().all()
        elif store.redis.exists(next_key(feed_key(follower))):
            # No feed, but one being rebuilt: what it may have read of the followee leaves it.
            params = {"author": followee, "n": store.settings.feed_size}
            ids = conn.execute(NEWEST_ANY, params).scalars().all()
        else:
            return
    store.run(
        [
            remove_from(store, feed_key(follower), ids[i : i + 1000])
            for i in range(0, len(ids), 1000)
        ]
    )


def _counts_of(row: Any) -> dict[str, int]:
    return {name: getattr(row, name) for name in COUNTS}


def merge_author_posts(store: Store, author_id: int, follower_ids: Sequence[int]) -> int:
    """Merge the author's newest posts into each follower's feed (those that exist), taken from
    PostgreSQL: a post is there from its commit on, while its own projection (which may have
    read the followers before this one) may not have reached the author's list in Redis yet.
    A post deleted in between is taken out again: after the writes, what is no longer published
    leaves the feeds (a deletion committed later is projected later, to these followers too)."""
    if not follower_ids:
        return 0
    with store.reader.connect() as conn:
        ids = (
            conn.execute(NEWEST_POSTS, {"author": author_id, "n": store.settings.feed_size})
            .scalars()
            .all()
        )
    if not ids:
        return 0
    pairs = [value for post_id in ids for value in (post_id, score_of(post_id))]
    changed = store.run(
        [
            store.call("feed_merge", list_keys(feed_key(f)), [store.settings.feed_size, *pairs])
            for f in follower_ids
        ]
    )
    with store.reader.connect() as conn:
        gone = conn.execute(UNPUBLISHED, {"ids": ids}).scalars().all()
    if gone:
        store.run([remove_from(store, feed_key(f), gone) for f in follower_ids])
    return sum(int(n) for n in changed)


def project_vote_cast(store: Store, event: VoteCast, send: SendPage) -> None:
    project_votes_cast(store, [event])


def project_votes_cast(store: Store, events: Sequence[VoteCast]) -> None:
    """Project votes, a message's worth at once: one PostgreSQL query for the posts' totals
    with their version and the voters' votes (the events carry none of it: see
    ``feed.events``), one Redis pipeline to apply them.

    Safe twice, reordered and late: what is applied is PostgreSQL's now, read in one snapshot,
    and only a newer version replaces what Redis holds; nothing is incremented."""
    pairs = sorted({(int(e.post_id), int(e.account_id)) for e in events})
    with store.reader.connect() as conn:
        rows = conn.execute(
            VOTES_STATE, {"posts": [p for p, _ in pairs], "accounts": [a for _, a in pairs]}
        ).all()
    commands = []
    for row in rows:
        commands += [
            store.call(
                "apply_post_votes",
                [post_key(row.post_id), tombstone_key(row.post_id)],
                [row.up, row.down, row.votes_version],
            ),
            store.call(
                "apply_my_vote",
                [my_votes_key(row.account_id)],
                [row.post_id, row.value, row.votes_version],
            ),
        ]
    store.run(commands)


def project_account_deleted(store: Store, event: AccountDeleted, send: SendPage) -> None:
    # Safe twice: deleting keys that are gone changes nothing; the pull set's entry is final.
    account_id = event.account_id
    store.run(
        [
            (
                "DEL",
                account_key(account_id),
                *list_keys(posts_key(account_id)),
                *list_keys(feed_key(account_id)),
                following_key(account_id),
                follow_versions_key(account_id),
                my_votes_key(account_id),
            ),
            store.call("apply_celebrity", [CELEBS_KEY], [account_id, DELETED_VERSION, 0, 0]),
        ]
    )


def project_post_placed(store: Store, event: PostPlaced, send: SendPage) -> None:
    # Safe twice and late: only the feeds PostgreSQL still places the post in get it, and
    # adding it again changes nothing.
    owners = placed_in(store, int(event.post_id), [int(a) for a in event.account_ids])
    if owners:
        add_to_feeds(store, owners, [int(event.post_id)])


def project_post_unplaced(store: Store, event: PostUnplaced, send: SendPage) -> None:
    # Safe twice and late: ZREM is idempotent, and a feed that should hold the post anyway
    # (its owner follows the author, or it is placed there again) keeps it.
    post_id, author = int(event.post_id), int(event.author_id)
    owners = tuple(int(a) for a in event.account_ids if int(a) != author)
    keep = set(still_following(store, author, owners)) | set(placed_in(store, post_id, owners))
    leaving = [o for o in owners if o not in keep]
    if leaving:
        store.run([remove_from(store, feed_key(o), [post_id]) for o in leaving])


HANDLERS: dict[type[Event], Callable[[Store, Any, SendPage], None]] = {
    PostPlaced: project_post_placed,
    PostUnplaced: project_post_unplaced,
    AccountDeleted: project_account_deleted,
    AccountRegistered: project_account_registered,
    PostPublished: project_post_published,
    PostDeleted: project_post_deleted,
    AccountFollowed: project_follow,
    AccountUnfollowed: project_follow,
    VoteCast: project_vote_cast,
}


def apply_fan_out_page(store: Store, page: FanOutPage, *, just_read: bool = False) -> int:
    """Apply one page of fan-out: one single-slot write per follower, in one pipeline (per
    node on a cluster); returns the entries changed.

    Safe twice: adding or removing the same members again changes nothing. Before adding, the
    followers are checked against PostgreSQL once, so a page that arrives after an unfollow
    does not put the post back; ``just_read`` skips that for a page the caller has read from
    PostgreSQL a moment ago (the projecting worker applying a single page itself).
    """
    if page.op == "remove":
        removed = store.run(
            [remove_from(store, feed_key(f), page.post_ids) for f in page.follower_ids]
        )
        return sum(int(n) for n in removed)
    followers = (
        list(page.follower_ids)
        if just_read
        else still_following(store, page.author_id, page.follower_ids)
    )
    if not followers:
        return 0
    if page.op == "merge_author":
        return merge_author_posts(store, page.author_id, followers)
    return add_to_feeds(store, followers, page.post_ids)


def add_to_feeds(store: Store, owners: Sequence[int], post_ids: Sequence[int]) -> int:
    """Add posts to the owners' feeds that exist: one single-slot write per feed, in one
    pipeline; returns the entries changed. A post deleted before is skipped, and one deleted
    while it is written taken out again."""
    deleted = store.run([("EXISTS", tombstone_key(p)) for p in post_ids])
    live = [p for p, gone in zip(post_ids, deleted, strict=True) if not gone]
    commands = [command for p in live for command in feed_adds(store, owners, p)]
    changed = sum(int(n) for n in store.run(commands))
    _remove_if_deleted(store, {p: [feed_key(o) for o in owners] for p in live})
    return changed


def feed_adds(store: Store, followers: Sequence[int], post_id: int) -> list[tuple[Any, ...]]:
    args = [post_id, score_of(post_id), store.settings.feed_size]
    return [store.call("feed_add", list_keys(feed_key(f)), args) for f in followers]


def _remove_if_deleted(store: Store, keys_of: dict[int, list[str]]) -> None:
    """After posts were written to lists (``keys_of``: post -> the keys): a post whose
    tombstone is there now was deleted while it was written, and leaves them again. The
    tombstone is set before a deletion's own removals, so either those removals come after
    the writes, or this check sees it."""
    if not keys_of:
        return
    posts = list(keys_of)
    deleted = store.run([("EXISTS", tombstone_key(p)) for p in posts])
    store.run(
        [
            remove_from(store, key, [p])
            for p, gone in zip(posts, deleted, strict=True)
            if gone
            for key in keys_of[p]
        ]
    )


def _document_of(event: PostPublished) -> str:
    return post_document(
        post_id=event.post_id,
        author_id=event.author_id,
        author_handle=event.author["handle"],
        author_display_name=event.author["display_name"],
        body=event.body,
        media=event.media,
        created_at=event.created_at,
    )


# A page of followers comes back as one int8[] value (decoded in C), not as a row per follower.
_FOLLOWER_PAGE = (
    "ARRAY(SELECT f.follower_id FROM follows f WHERE f.followee_id = {author} "
    "AND f.follower_id > :after ORDER BY f.follower_id LIMIT :n)"
)
FOLLOWER_PAGE = text("SELECT " + _FOLLOWER_PAGE.format(author=":author"))
# Posts' statuses and vote counts, their authors' counters and, where asked and the author is
# pushed (below the pull threshold), the first page of followers: one round trip for a
# message's posts. A post not in PostgreSQL comes back unpublished.
POSTS_STATE = text(
    "SELECT x.id, p.status, p.status IS NOT DISTINCT FROM 'published' AS published, "
    "p.up, p.down, p.votes_version, "
    "a.followers_count, a.following_count, a.posts_count, a.counts_version, "
    "CASE WHEN x.with_followers AND coalesce(a.followers_count, 0) < :threshold THEN "
    + _FOLLOWER_PAGE.format(author="p.author_id")
    + " END AS followers FROM unnest(CAST(:ids AS int8[]), CAST(:with_followers AS bool[]))"
    " AS x(id, with_followers) LEFT JOIN posts p ON p.id = x.id "
    "LEFT JOIN accounts a ON a.id = p.author_id"
)
# A follow's accounts (their status and counters) and whether it stands: one snapshot.
FOLLOW_STATE = text(
    "SELECT a.id, a.status, a.followers_count, a.following_count, a.posts_count, "
    "a.counts_version, EXISTS (SELECT FROM follows f WHERE f.follower_id = :a "
    "AND f.followee_id = :b) AS following FROM accounts a WHERE a.id IN (:a, :b)"
)
# Votes' posts' totals with their version, and the voters' votes (0 for none): one snapshot.
VOTES_STATE = text(
    "SELECT x.post_id, x.account_id, p.up, p.down, p.votes_version, "
    "coalesce(v.value, 0) AS value "
    "FROM unnest(CAST(:posts AS int8[]), CAST(:accounts AS int8[])) AS x(post_id, account_id) "
    "JOIN posts p ON p.id = x.post_id "
    "LEFT JOIN votes v ON v.post_id = x.post_id AND v.account_id = x.account_id"
)
POSTS_SINCE = text("SELECT id FROM posts WHERE author_id = :author AND id >= :since")
NEWEST_ANY = text("SELECT id FROM posts WHERE author_id = :author ORDER BY id DESC LIMIT :n")
NEWEST_POSTS = text(
    "SELECT id FROM posts WHERE author_id = :author AND status = 'published' "
    "ORDER BY id DESC LIMIT :n"
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


def placed_in(store: Store, post_id: int, owners: Sequence[int]) -> list[int]:
    """The subset of ``owners`` whose feeds PostgreSQL places ``post_id`` in now."""
    if not store.sources.placements or not owners:
        return []
    with store.reader.connect() as conn:
        return store.sources.placed_in(conn, post_id, owners)


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


def _counts_call(store: Store, account_id: str | int, counts: dict[str, int]) -> tuple[Any, ...]:
    """The command applying an account's counters (``apply_counts``)."""
    return store.call(
        "apply_counts",
        [account_key(account_id)],
        [
            counts["followers_count"],
            counts["following_count"],
            counts["posts_count"],
            counts["counts_version"],
            store.settings.feed_pull_threshold,
        ],
    )


def _after_counts(
    store: Store, account_id: str | int, counts: dict[str, int], answer: Any, send: SendPage
) -> None:
    """Tell the pull set what ``apply_counts`` answered, in the pull set's own slot; an
    account that just left it gets its posts pushed to its followers' feeds."""
    answer = int(answer)
    if answer in (STALE, UNCHANGED):
        return
    left = store.execute(
        store.call(
            "apply_celebrity",
            [CELEBS_KEY],
            [
                account_id,
                counts["counts_version"],
                1 if answer == JOINED else 0,
                1 if answer == LEFT_IF_LISTED else 0,
            ],
        )
    )
    if int(left) == -1:
        log.info("account_demoted_from_pull", account_id=str(account_id))
        for followers in follower_pages(store, int(account_id)):
            send(FanOutPage("merge_author", int(account_id), followers))


def _posts_state(store: Store, posts: Sequence[tuple[int, bool]]) -> dict[int, Any]:
    """For each ``(post_id, with_followers)``: whether the post is published in PostgreSQL,
    its vote counts and their version, its author's counters (``COUNTS``) and, if asked and the
    author is pushed, its author's first page of followers (``None`` when not). One query."""
    with store.reader.connect() as conn:
        rows = conn.execute(
            POSTS_STATE,
            {
                "ids": [post_id for post_id, _ in posts],
                "with_followers": [asked for _, asked in posts],
                "after": 0,
                "n": store.settings.fanout_page_size,
                "threshold": store.settings.feed_pull_threshold,
            },
        ).all()
    return {row.id: row for row in rows}
