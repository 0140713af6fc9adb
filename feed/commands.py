"""Command handlers: one function per command, each inside one unit of work.

Lock order, to keep concurrent commands free of deadlocks: a post row first, then the
accounts involved, always in ascending id order (``_lock_accounts``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Integer,
    Select,
    SmallInteger,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from feed import idempotency
from feed.auth import Principal
from feed.clock import rfc3339, utcnow
from feed.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from feed.events import (
    AccountDeleted,
    AccountFollowed,
    AccountRegistered,
    AccountUnfollowed,
    PostDeleted,
    PostPublished,
    VoteCast,
    account_counts,
    post_author,
)
from feed.outbox import append_when
from feed.schema import accounts, follows, posts, votes
from feed.unit_of_work import UnitOfWork

Row = Mapping[str, Any]


# --- the commands -------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterAccount:
    handle: str
    password_hash: str = field(repr=False)
    display_name: str | None = None


@dataclass(frozen=True)
class PublishPost:
    author: Principal
    body: str
    media_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class PublishWithMedia:
    """A post with media: a saga publishes it once moderation passed. Its handler is the
    sagas' (registered in ``Services.handlers`` at start-up)."""

    author: Principal
    body: str
    media_ids: tuple[str, ...]


@dataclass(frozen=True)
class DeletePost:
    actor: Principal
    post_id: int


@dataclass(frozen=True)
class FollowAccount:
    follower: Principal
    followee_id: int


@dataclass(frozen=True)
class UnfollowAccount:
    follower: Principal
    followee_id: int


@dataclass(frozen=True)
class CastVote:
    voter: Principal
    post_id: int
    value: int


# --- handlers -----------------------------------------------------------------------------


def register_account(uow: UnitOfWork, cmd: RegisterAccount) -> Row:
    """Create an account; a taken handle is a ``Conflict`` (also when two race for it)."""
    row = (
        uow.conn.execute(
            pg_insert(accounts)
            .values(
                handle=cmd.handle,
                display_name=cmd.display_name or cmd.handle,
                password_hash=cmd.password_hash,
            )
            .on_conflict_do_nothing(index_elements=[accounts.c.handle])
            .returning(*accounts.c)
        )
        .mappings()
        .first()
    )
    if row is None:
        raise Conflict("That handle is taken.", errors={"handle": ["This handle is taken."]})
    uow.emit(
        AccountRegistered(
            account_id=str(row["id"]),
            handle=row["handle"],
            display_name=row["display_name"],
            created_at=rfc3339(row["created_at"]),
        )
    )
    return row


def publish_post(uow: UnitOfWork, cmd: PublishPost) -> Row:
    """Publish a text post now (posts with media go through the publish saga).

    Two statements, each a transaction of its own (the unit of work is in autocommit). The
    first reads what the post and its ``PostPublished`` need: a new post id, the time, and the
    author as a post shows it. The second (``PUBLISH_POST``) bumps the author's counters,
    inserts the post and appends the event, its payload a parameter. The author's row is
    locked only while PostgreSQL runs it: across a transaction's round trips a busy gevent
    worker held it until it came back to the greenlet, and the author's next posts waited on
    the lock, each holding a pooled connection.
    """
    if cmd.media_ids:
        # No media can be attached yet: every id is unknown to the media service.
        raise InvalidInput(
            "Unknown media.",
            errors={"media_ids": [f"Unknown media id: {cmd.media_ids[0]}"]},
        )
    seen = uow.conn.execute(PUBLISH_POST_READ, {"author_id": cmd.author.account_id}).first()
    if seen is None:
        raise Unauthenticated("This account is no longer active.")
    post_id, created_at, *columns = seen
    author = dict(zip(_ANSWER_AUTHOR, columns, strict=True))
    post = {
        "id": post_id,
        "body": cmd.body,
        "status": "published",
        "created_at": created_at,
        "up": 0,
        "down": 0,
    }
    params = {
        "author_id": author["id"],
        "post_id": post_id,
        "body": cmd.body,
        "post_time": created_at,  # not "created_at": the accounts update would SET it
        **uow.in_statement(_published(post, author, media=())),
    }
    position = uow.conn.execute(PUBLISH_POST, params).scalar()
    if position is None:  # disabled or deleted since the read
        raise Unauthenticated("This account is no longer active.")
    uow.appended(position)
    return {**post, "author": author, "media": [], "my_vote": 0}


def _published(post: Row, author: Row, media: tuple[dict[str, Any], ...]) -> PostPublished:
    """The event of a post just published."""
    return PostPublished(
        post_id=str(post["id"]),
        author_id=str(author["id"]),
        body=post["body"],
        created_at=rfc3339(post["created_at"]),
        author=post_author(author),
        media=media,
    )


def create_pending_post(conn: Connection, author: Principal, body: str) -> Row:
    """A post that waits for its publish saga (media, moderation): not visible, not counted."""
    (account,) = _lock_accounts(conn, [author.account_id], actor=author)
    post = (
        conn.execute(
            insert(posts)
            .values(author_id=account["id"], body=body, status="pending")
            .returning(*posts.c)
        )
        .mappings()
        .one()
    )
    return {**post, "author": account, "my_vote": 0}


def publish_pending_post(
    conn: Connection, post_id: int, media: list[dict[str, Any]]
) -> PostPublished | None:
    """Make a pending post visible (the publish saga's step); None if it is not pending.

    Returns the ``PostPublished`` event for the caller to append to the outbox.
    """
    post = (
        conn.execute(
            update(posts)
            .where(posts.c.id == post_id, posts.c.status == "pending")
            .values(status="published")
            .returning(*posts.c)
        )
        .mappings()
        .first()
    )
    if post is None:
        return None
    author = _bump_counts(conn, post["author_id"], posts_count=1)
    return _published(post, author, media=tuple(media))


def delete_post(uow: UnitOfWork, cmd: DeletePost) -> None:
    """Delete a post: its author or an admin only. It leaves every feed through ``PostDeleted``."""
    post = _lock_post(uow.conn, cmd.post_id, statuses=("published", "pending", "rejected"))
    involved = {post["author_id"], cmd.actor.account_id}
    locked = {row["id"]: row for row in _lock_accounts(uow.conn, involved, actor=cmd.actor)}
    actor = locked[cmd.actor.account_id]
    if post["author_id"] != actor["id"] and not actor["is_admin"]:
        raise Forbidden("Only the author or an admin can delete this post.")
    uow.emit(_mark_deleted(uow.conn, post, deleted_by=actor["id"]))


def _mark_deleted(conn: Connection, post: Row, *, deleted_by: int) -> PostDeleted:
    """Mark a locked post deleted, its text blanked (a deleted post keeps no content), uncount
    it if it was published; the event that says so."""
    deleted_at = conn.execute(
        update(posts)
        .where(posts.c.id == post["id"])
        .values(status="deleted", deleted_at=func.now(), body="")
        .returning(posts.c.deleted_at)
    ).scalar_one()
    was_counted = post["status"] == "published"
    counts = _bump_counts(conn, post["author_id"], posts_count=-1 if was_counted else 0)
    return PostDeleted(
        post_id=str(post["id"]),
        author_id=str(post["author_id"]),
        deleted_by=str(deleted_by),
        deleted_at=rfc3339(deleted_at),
        author_counts=account_counts(counts),
    )


def follow_account(uow: UnitOfWork, cmd: FollowAccount) -> bool:
    """Follow an account; following it again changes nothing. Returns True (following)."""
    if cmd.follower.account_id == cmd.followee_id:
        raise InvalidInput(
            "You cannot follow yourself.", errors={"id": ["You cannot follow yourself."]}
        )
    at = utcnow()
    event = AccountFollowed(
        follower_id=str(cmd.follower.account_id),
        followee_id=str(cmd.followee_id),
        followed_at=rfc3339(at),
    )
    _run_follow_statement(uow, FOLLOW, event, at)
    return True


def unfollow_account(uow: UnitOfWork, cmd: UnfollowAccount) -> bool:
    """Stop following an account; not following it already changes nothing. Returns False."""
    if cmd.follower.account_id == cmd.followee_id:
        raise InvalidInput(
            "You cannot unfollow yourself.", errors={"id": ["You cannot unfollow yourself."]}
        )
    at = utcnow()
    event = AccountUnfollowed(
        follower_id=str(cmd.follower.account_id),
        followee_id=str(cmd.followee_id),
        unfollowed_at=rfc3339(at),
    )
    _run_follow_statement(uow, UNFOLLOW, event, at)
    return False


def _run_follow_statement(
    uow: UnitOfWork, statement: Select, event: AccountFollowed | AccountUnfollowed, at: datetime
) -> None:
    params = {
        "follower_id": int(event.follower_id),
        "followee_id": int(event.followee_id),
        "at": at,
        **uow.in_statement(event),
    }
    row = uow.conn.execute(statement, params).one()
    if not row.follower_active:
        raise Unauthenticated("This account is no longer active.")
    if not row.followee_found:
        raise NotFound("No such account.")
    if row.event_position is not None:
        uow.appended(row.event_position)


def _remove_follow(
    conn: Connection, follower_id: int, followee_id: int
) -> AccountUnfollowed | None:
    """Delete a follow (both accounts already locked) and uncount it; None if there was none."""
    removed = conn.execute(
        delete(follows)
        .where(and_(follows.c.follower_id == follower_id, follows.c.followee_id == followee_id))
        .returning(func.now())
    ).scalar_one_or_none()
    if removed is None:
        return None
    _bump_counts(conn, follower_id, following_count=-1)
    _bump_counts(conn, followee_id, followers_count=-1)
    return AccountUnfollowed(
        follower_id=str(follower_id), followee_id=str(followee_id), unfollowed_at=rfc3339(removed)
    )


def cast_vote(uow: UnitOfWork, cmd: CastVote) -> Row:
    """Set the caller's vote on a post (1, -1, 0 to clear); returns the post's exact counts.

    One statement (``CAST_VOTE``): the post's row is locked only while PostgreSQL runs it, so
    votes on a popular post do not queue behind each other's round trips. The change is
    counted from the vote it replaces, read under that vote's row lock. Should another vote by
    the same account on the same post insert the first vote row meanwhile, the statement fails
    on the key, writes nothing, and runs again (in a savepoint when the command has a
    transaction of its own, for its idempotency record).
    """
    event = VoteCast(
        post_id=str(cmd.post_id), account_id=str(cmd.voter.account_id), value=cmd.value
    )
    params = {
        "voter_id": cmd.voter.account_id,
        "voted_post_id": cmd.post_id,
        "vote": cmd.value,
        **uow.in_statement(event),
    }
    for attempt in range(1, VOTE_ATTEMPTS + 1):
        try:
            with nullcontext() if uow.single_statement else uow.conn.begin_nested():
                row = uow.conn.execute(CAST_VOTE, params).mappings().first()
            break
        except IntegrityError as error:
            if getattr(error.orig, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
            if attempt == VOTE_ATTEMPTS:
                raise Conflict("Votes by this account on this post raced; try again.") from error
    if row is None:
        raise NotFound("No such post.")
    if not row["voter_active"]:
        raise Unauthenticated("This account is no longer active.")
    result = {"post_id": cmd.post_id, "up": row["up"], "down": row["down"], "my_vote": cmd.value}
    if row["event_position"] is not None:
        uow.appended(row["event_position"])
        return {**result, "up": row["new_up"], "down": row["new_down"]}
    if row["previous"] != cmd.value:  # the post was locked and published: it must have counted
        raise RuntimeError(f"vote on post {cmd.post_id} changed nothing but was not a repeat")
    return result


# --- locking and counters -----------------------------------------------------------------


def _lock_accounts(
    conn: Connection,
    ids: Iterable[int],
    *,
    actor: Principal,
    must_be_active: Iterable[int] = (),
) -> list[Row]:
    """Lock the given accounts in id order; the actor must be active (it is marked active now).

    Raises ``Unauthenticated`` when the actor's account is gone or disabled, ``NotFound`` when
    another account does not exist, is deleted, or is disabled and in ``must_be_active`` (you
    cannot start following a disabled account, but you can unfollow it or, as an admin, delete
    its posts).
    """
    wanted = sorted(set(ids))
    rows = (
        conn.execute(
            select(accounts)
            .where(accounts.c.id.in_(wanted))
            .order_by(accounts.c.id)
            .with_for_update(key_share=True)
        )
        .mappings()
        .all()
    )
    by_id = {row["id"]: row for row in rows}
    me = by_id.get(actor.account_id)
    if me is None or me["status"] != "active":
        raise Unauthenticated("This account is no longer active.")
    active_required = set(must_be_active)
    for account_id in wanted:
        row = by_id.get(account_id)
        if row is None or row["status"] == "deleted":
            raise NotFound("No such account.")
        if account_id in active_required and row["status"] != "active":
            raise NotFound("No such account.")
    conn.execute(
        update(accounts).where(accounts.c.id == actor.account_id).values(last_active_at=func.now())
    )
    return [by_id[account_id] for account_id in wanted]


def _lock_post(conn: Connection, post_id: int, *, statuses: tuple[str, ...]) -> Row:
    row = (
        conn.execute(
            select(posts)
            .where(posts.c.id == post_id, posts.c.status.in_(statuses))
            .with_for_update(key_share=True)
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound("No such post.")
    return row


def _counter_changes(deltas: dict[str, int]) -> dict[str, Any]:
    """SET clauses adding ``deltas`` to an account's counters, with a new counts version."""
    values: dict[str, Any] = {name: accounts.c[name] + delta for name, delta in deltas.items()}
    values["counts_version"] = accounts.c.counts_version + 1
    return values


def _bump_counts(conn: Connection, account_id: int, **deltas: int) -> Row:
    values = _counter_changes(deltas)
    return (
        conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(**values)
            .returning(*accounts.c)
        )
        .mappings()
        .one()
    )


# What the answer to a post (PostOut) needs of its author.
_ANSWER_AUTHOR = ("id", "handle", "display_name")


def _publish_post_statements() -> tuple[Select, Select]:
    """``publish_post``'s read and its write. The read returns the post's id and time, then
    ``_ANSWER_AUTHOR`` of an active author (no row for another). The write bumps the author's
    counters (a new counts version, marked active) if the author is still active, inserts the
    post from that update (so nothing is inserted when it updated nothing) and appends the
    event from the insert; it returns the event's position, or no row when it wrote nothing.
    """
    read = select(
        func.next_id(type_=BigInteger),
        func.now(),
        *(accounts.c[name] for name in _ANSWER_AUTHOR),
    ).where(accounts.c.id == bindparam("author_id"), accounts.c.status == "active")
    author = (
        update(accounts)
        .where(accounts.c.id == bindparam("author_id"), accounts.c.status == "active")
        .values(**_counter_changes({"posts_count": 1}), last_active_at=func.now())
        .returning(accounts.c.id)
        .cte("author")
    )
    post = (
        insert(posts)
        .from_select(
            ["id", "author_id", "body", "created_at"],
            select(
                bindparam("post_id", type_=BigInteger),
                author.c.id,
                bindparam("body", type_=Text),
                bindparam("post_time", type_=posts.c.created_at.type),
            ),
        )
        .returning(posts.c.id)
        .cte("post")
    )
    event = append_when(post).cte("event")
    return read, select(event.c.position)


PUBLISH_POST_READ, PUBLISH_POST = _publish_post_statements()
VOTE_ATTEMPTS = 10
UNIQUE_VIOLATION = "23505"


def _cast_vote_statement() -> Select:
    """A vote in one statement; parameters ``voter_id``, ``voted_post_id``, ``vote`` and the
    ``VoteCast``'s ``outbox.statement_params`` (named apart from the columns of the tables it
    updates: SQLAlchemy adds a parameter named like a column to that column's ``SET``).

    Locks are taken in the order the other commands take them: the post first (``FOR NO KEY
    UPDATE``; ``voter`` waits for ``target``), then the voter's account. The voter is marked
    active (one account's votes take turns on its row), its previous vote on the post is read
    with ``FOR UPDATE`` (the latest committed one, whatever the statement's snapshot saw), and
    when the vote changes, the post's counters move by the difference, the vote row is
    inserted, updated or deleted, and the ``VoteCast`` is appended to the outbox. A missing vote
    row that another statement inserts meanwhile makes the insert fail on the key: the caller
    runs the statement again.

    It returns no row when the post is not published; else ``voter_active``, ``previous``,
    the post's locked ``up`` and ``down``, and ``new_up``, ``new_down`` and
    ``event_position`` when the vote changed something (else NULL).
    """
    voter_id = bindparam("voter_id", type_=BigInteger)
    post_id = bindparam("voted_post_id", type_=BigInteger)
    value = bindparam("vote", type_=SmallInteger)
    target = (
        select(posts.c.id, posts.c.up, posts.c.down)
        .where(posts.c.id == post_id, posts.c.status == "published")
        .with_for_update(key_share=True)  # FOR NO KEY UPDATE: the post first, as delete_post
        .cte("target")
    )
    voter = (
        update(accounts)
        .where(accounts.c.id == voter_id, accounts.c.status == "active")
        .where(select(target.c.id).exists())
        .values(last_active_at=func.now())
        .returning(accounts.c.id)
        .cte("voter")
    )
    old = (
        select(votes.c.value)
        .where(votes.c.account_id == voter.c.id, votes.c.post_id == post_id)
        .with_for_update(of=votes)
        .cte("old")
    )
    previous = func.coalesce(select(old.c.value).scalar_subquery(), 0)
    counts = (
        update(posts)
        .where(
            posts.c.id == post_id,
            posts.c.status == "published",
            select(voter.c.id).exists(),
            previous != value,
        )
        .values(
            up=posts.c.up + cast(value == 1, Integer) - cast(previous == 1, Integer),
            down=posts.c.down + cast(value == -1, Integer) - cast(previous == -1, Integer),
            votes_version=posts.c.votes_version + 1,
        )
        .returning(
            posts.c.up,
            posts.c.down,
            posts.c.votes_version,
            previous.label("previous"),
            select(old.c.value).exists().label("present"),
        )
        .cte("counts")
    )
    key = (votes.c.account_id == voter_id, votes.c.post_id == post_id)
    changed = select(counts.c.present).where(counts.c.present).exists()
    inserted = (
        insert(votes)
        .from_select(
            ["account_id", "post_id", "value"],
            select(voter_id, post_id, value).where(~counts.c.present, value != 0),
        )
        .returning(votes.c.value)
        .cte("inserted")
    )
    updated = (
        update(votes)
        .where(*key, changed, value != 0)
        .values(value=value, updated_at=func.now())
        .returning(votes.c.value)
        .cte("updated")
    )
    deleted = (delete(votes).where(*key, changed, value == 0).returning(votes.c.value)).cte(
        "deleted"
    )
    event = append_when(counts).cte("event")
    return (
        select(
            select(voter.c.id).exists().label("voter_active"),
            previous.label("previous"),
            target.c.up,
            target.c.down,
            counts.c.up.label("new_up"),
            counts.c.down.label("new_down"),
            event.c.position.label("event_position"),
        )
        .select_from(target.outerjoin(counts, true()).outerjoin(event, true()))
        # The vote row's writes are not read by the answer; naming them keeps them in the
        # statement (PostgreSQL runs every data-modifying WITH to completion).
        .add_cte(inserted, updated, deleted)
    )


CAST_VOTE = _cast_vote_statement()


def _follow_statement(*, follow: bool) -> Select:
    """A follow (or an unfollow) in one statement; parameters ``follower_id``, ``followee_id``,
    ``at`` (the follow's time) and the event's ``outbox.statement_params``.

    Both accounts are locked in id order (``FOR NO KEY UPDATE``, as ``_lock_accounts`` does, so
    two accounts following each other at once cannot deadlock) and checked: the follower must be
    active; the followee active to be followed, not deleted to be unfollowed. The follow row is
    inserted (``ON CONFLICT DO NOTHING``: a follow that is there already, or that another
    statement inserts meanwhile, changes nothing) or deleted; when it changed, both accounts'
    counters move and the event is appended. The follower is marked active either way.

    Returns one row: ``follower_active``, ``followee_found``, and ``event_position`` when the
    follow changed (else NULL).
    """
    follower_id = bindparam("follower_id", type_=BigInteger)
    followee_id = bindparam("followee_id", type_=BigInteger)
    is_follower, is_followee = accounts.c.id == follower_id, accounts.c.id == followee_id
    followee_status = accounts.c.status == "active" if follow else accounts.c.status != "deleted"
    pair = (
        select(accounts.c.id)
        .where(
            or_(
                and_(is_follower, accounts.c.status == "active"),
                and_(is_followee, followee_status),
            )
        )
        .order_by(accounts.c.id)
        .with_for_update(key_share=True)  # FOR NO KEY UPDATE, in id order (ORDER BY)
        .cte("pair")
    )
    follower_active = select(pair.c.id).where(pair.c.id == follower_id).exists()
    followee_found = select(pair.c.id).where(pair.c.id == followee_id).exists()
    both = and_(follower_active, followee_found)
    if follow:
        change = (
            pg_insert(follows)
            .from_select(
                ["follower_id", "followee_id", "created_at"],
                select(
                    follower_id, followee_id, bindparam("at", type_=follows.c.created_at.type)
                ).where(both),
            )
            .on_conflict_do_nothing()
            .returning(follows.c.follower_id)
            .cte("change")
        )
    else:
        change = (
            delete(follows)
            .where(follows.c.follower_id == follower_id, follows.c.followee_id == followee_id)
            .where(both)
            .returning(follows.c.follower_id)
            .cte("change")
        )
    changed = select(change.c.follower_id).exists()
    delta = 1 if follow else -1
    counted = (
        update(accounts)
        .where(accounts.c.id.in_([follower_id, followee_id]), both, or_(is_follower, changed))
        .values(
            last_active_at=case((is_follower, func.now()), else_=accounts.c.last_active_at),
            following_count=accounts.c.following_count
            + case((and_(is_follower, changed), delta), else_=0),
            followers_count=accounts.c.followers_count
            + case((and_(is_followee, changed), delta), else_=0),
            counts_version=accounts.c.counts_version + case((changed, 1), else_=0),
        )
        .returning(accounts.c.id)
        .cte("counted")
    )
    event = append_when(change).cte("event")
    return select(
        follower_active.label("follower_active"),
        followee_found.label("followee_found"),
        select(event.c.position).scalar_subquery().label("event_position"),
    ).add_cte(counted)  # not read by the answer; naming it keeps it in the statement


FOLLOW = _follow_statement(follow=True)
UNFOLLOW = _follow_statement(follow=False)


# --- account deletion (steps of the delete-account saga) ---------------------------------


def set_account_status(conn: Connection, account_id: int, *, from_: str, to: str) -> bool:
    """Move an account between statuses; False if it was not in ``from_``."""
    return bool(
        conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id, accounts.c.status == from_)
            .values(status=to)
        ).rowcount
    )


def purge_posts(conn: Connection, account_id: int) -> list[PostDeleted]:
    """Delete every post of the account; the events take them out of every feed and cache."""
    events = []
    ids = (
        conn.execute(
            select(posts.c.id)
            .where(posts.c.author_id == account_id, posts.c.status != "deleted")
            .order_by(posts.c.id)
        )
        .scalars()
        .all()
    )
    for post_id in ids:
        post = _lock_post(conn, post_id, statuses=("published", "pending", "rejected"))
        events.append(_mark_deleted(conn, post, deleted_by=account_id))
    return events


def purge_votes(conn: Connection, account_id: int) -> list[VoteCast]:
    """Clear every vote of the account, correcting each post's counts."""
    events = []
    voted = (
        conn.execute(
            select(votes.c.post_id)
            .where(votes.c.account_id == account_id)
            .order_by(votes.c.post_id)
        )
        .scalars()
        .all()
    )
    for post_id in voted:
        conn.execute(
            select(posts.c.id).where(posts.c.id == post_id).with_for_update(key_share=True)
        )
        previous = conn.execute(
            delete(votes)
            .where(votes.c.account_id == account_id, votes.c.post_id == post_id)
            .returning(votes.c.value)
        ).scalar_one_or_none()
        if previous is None:
            continue
        conn.execute(
            update(posts)
            .where(posts.c.id == post_id)
            .values(
                up=posts.c.up - int(previous == 1),
                down=posts.c.down - int(previous == -1),
                votes_version=posts.c.votes_version + 1,
            )
        )
        events.append(VoteCast(post_id=str(post_id), account_id=str(account_id), value=0))
    return events


def purge_follows(conn: Connection, account_id: int) -> list[AccountUnfollowed]:
    """Remove the account's follows in both directions, correcting both sides' counters."""
    events = []
    pairs = conn.execute(
        select(follows.c.follower_id, follows.c.followee_id).where(
            (follows.c.follower_id == account_id) | (follows.c.followee_id == account_id)
        )
    ).all()
    # Every account involved, locked at once in id order as a follow locks its two: locking
    # pair by pair in the rows' order could hold one partner while a follow between two
    # partners holds the next (a deadlock).
    involved = sorted({account_id, *(member for pair in pairs for member in pair)})
    conn.execute(
        select(accounts.c.id)
        .where(accounts.c.id.in_(involved))
        .order_by(accounts.c.id)
        .with_for_update(key_share=True)
    )
    for follower_id, followee_id in pairs:
        event = _remove_follow(conn, follower_id, followee_id)
        if event is not None:
            events.append(event)
    return events


def erase_account(conn: Connection, account_id: int) -> AccountDeleted | None:
    """Forget the account: no handle, name or password kept, nor any answer remembered for an
    Idempotency-Key; its id stays as a tombstone."""
    idempotency.forget_account(conn, account_id)
    erased = conn.execute(
        update(accounts)
        .where(accounts.c.id == account_id, accounts.c.status != "deleted")
        .values(
            status="deleted",
            # "-" is in no handle a registration accepts: nobody can take this one first.
            handle=f"deleted-{account_id}",
            display_name="",
            password_hash="",
            is_admin=False,
        )
    ).rowcount
    return AccountDeleted(account_id=str(account_id)) if erased else None
