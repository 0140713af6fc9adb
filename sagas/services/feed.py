"""The feed participant: promotion campaigns and their placements in home feeds.

Placements are rows in PostgreSQL (so a rebuilt feed keeps them) and entries in the Redis feeds
that exist; both are written so that running a step twice changes nothing more.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, delete, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from feed.commands import (
    erase_account,
    publish_pending_post,
    purge_follows,
    purge_posts,
    purge_votes,
    set_account_status,
)
from feed.events import PostPlaced, PostUnplaced
from feed.outbox import append_events
from feed.readmodel.sources import Placements
from sagas.schema import campaign_placements, campaigns
from sagas.services import StepContext, StepFailed, handles

# A promoted post is in the feeds it was placed in while its campaign runs or after it
# completed: a home feed's sources (sagas/bootstrap.py hands them to the read side).
PROMOTED_PLACEMENTS = Placements(
    "SELECT cp.account_id, c.post_id FROM campaign_placements cp"
    " JOIN campaigns c ON c.id = cp.campaign_id JOIN posts q ON q.id = c.post_id"
    " WHERE c.status IN ('active', 'completed') AND q.status = 'published'"
)
# Accounts an event names at most: a large campaign's placements go in several events.
EVENT_ACCOUNTS = 500


def campaign_id_for(saga_id: str) -> uuid.UUID:
    """One campaign per saga, with an id derived from it (a repeated step finds the same)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"campaign:{saga_id}")


@handles("feed", "create_campaign")
def create_campaign(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    post = conn.execute(
        text("SELECT author_id, status FROM posts WHERE id = :id"), {"id": int(args["post_id"])}
    ).first()
    if post is None or post.status != "published" or post.author_id != int(args["account_id"]):
        raise StepFailed("the post is not a published post of this account")
    campaign_id = campaign_id_for(ctx.saga_id)
    conn.execute(
        pg_insert(campaigns)
        .values(
            id=campaign_id,
            saga_id=ctx.saga_id,
            post_id=int(args["post_id"]),
            account_id=int(args["account_id"]),
            credits=int(args["credits"]),
            status="active",
        )
        .on_conflict_do_nothing()
    )
    return {"campaign_id": str(campaign_id)}


@handles("feed", "cancel_campaign")
def cancel_campaign(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    conn.execute(
        update(campaigns)
        .where(campaigns.c.id == campaign_id_for(ctx.saga_id), campaigns.c.status == "active")
        .values(status="cancelled")
    )
    return {}


@handles("feed", "place_promoted")
def place_promoted(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Put the post in the feeds of up to ``credits`` recently active accounts that do not
    follow the author (one credit, one placement)."""
    campaign_id = campaign_id_for(ctx.saga_id)
    author, post_id = int(args["account_id"]), int(args["post_id"])
    settings = ctx.services.settings
    chosen = (
        conn.execute(
            text(
                "SELECT a.id FROM accounts a WHERE a.status = 'active' AND a.id <> :author "
                "AND a.last_active_at > now() - make_interval(days => :days) "
                "AND NOT EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = a.id "
                "AND f.followee_id = :author) "
                "AND NOT EXISTS (SELECT 1 FROM campaign_placements p WHERE p.campaign_id = :c "
                "AND p.account_id = a.id) "
                "ORDER BY a.last_active_at DESC, a.id LIMIT :n"
            ),
            {
                "author": author,
                "days": settings.feed_active_days,
                "c": campaign_id,
                "n": int(args["credits"]),
            },
        )
        .scalars()
        .all()
    )
    already = (
        conn.execute(
            select(campaign_placements.c.account_id).where(
                campaign_placements.c.campaign_id == campaign_id
            )
        )
        .scalars()
        .all()
    )
    # A repeated step places only what is still owed: one placement per credit, never more.
    added = chosen[: max(0, int(args["credits"]) - len(already))]
    if added:
        conn.execute(
            pg_insert(campaign_placements).on_conflict_do_nothing(),
            [{"campaign_id": campaign_id, "account_id": a} for a in added],
        )
    wanted = [*already, *added]
    append_events(conn, placement_events(post_id, wanted))
    # The saga keeps where the post went, so a repair knows which feeds it touched.
    return {"placed": len(wanted), "placed_accounts": [str(a) for a in wanted]}


@handles("feed", "remove_promoted")
def remove_promoted(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    campaign_id = campaign_id_for(ctx.saga_id)
    placed = (
        conn.execute(
            delete(campaign_placements)
            .where(campaign_placements.c.campaign_id == campaign_id)
            .returning(campaign_placements.c.account_id)
        )
        .scalars()
        .all()
    )
    append_events(conn, withdrawal_events(int(args["post_id"]), int(args["account_id"]), placed))
    return {"placed": 0}


@handles("feed", "complete_campaign")
def complete_campaign(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    conn.execute(
        update(campaigns)
        .where(campaigns.c.id == campaign_id_for(ctx.saga_id), campaigns.c.status == "active")
        .values(status="completed")
    )
    return {}


def placement_events(post_id: int, accounts: list[int]) -> list[PostPlaced]:
    return [
        PostPlaced(str(post_id), tuple(str(a) for a in accounts[i : i + EVENT_ACCOUNTS]))
        for i in range(0, len(accounts), EVENT_ACCOUNTS)
    ]


def withdrawal_events(post_id: int, author_id: int, accounts: list[int]) -> list[PostUnplaced]:
    return [
        PostUnplaced(
            str(post_id), str(author_id), tuple(str(a) for a in accounts[i : i + EVENT_ACCOUNTS])
        )
        for i in range(0, len(accounts), EVENT_ACCOUNTS)
    ]


@handles("feed", "hold_post")
def hold_post(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    status = conn.execute(
        text("SELECT status FROM posts WHERE id = :id"), {"id": int(args["post_id"])}
    ).scalar_one_or_none()
    if status not in ("pending", "published"):
        raise StepFailed(f"the post is {status or 'gone'}")
    return {}


@handles("feed", "reject_post")
def reject_post(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    conn.execute(
        text("UPDATE posts SET status = 'rejected' WHERE id = :id AND status = 'pending'"),
        {"id": int(args["post_id"])},
    )
    return {}


@handles("feed", "publish_post")
def publish_post(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Make the pending post visible; its PostPublished event fans it out. A post deleted
    while it waited is not published (and not reported as published)."""
    event = publish_pending_post(conn, int(args["post_id"]), list(args.get("media", [])))
    if event is not None:
        append_events(conn, [event])
        return {}
    status = conn.execute(
        text("SELECT status FROM posts WHERE id = :id"), {"id": int(args["post_id"])}
    ).scalar_one_or_none()
    if status != "published":
        raise StepFailed(f"the post is {status or 'gone'}, not pending")
    return {}


@handles("feed", "disable_account")
def disable_account(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    account_id = int(args["account_id"])
    if not set_account_status(conn, account_id, from_="active", to="disabled"):
        status = conn.execute(
            text("SELECT status FROM accounts WHERE id = :id"), {"id": account_id}
        ).scalar_one_or_none()
        if status != "disabled":  # disabled already: a repeat of this step
            raise StepFailed(f"the account is {status or 'gone'}")
    return {}


@handles("feed", "enable_account")
def enable_account(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    set_account_status(conn, int(args["account_id"]), from_="disabled", to="active")
    return {}


@handles("feed", "purge_posts")
def purge_account_posts(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Delete the account's posts (their events clear every feed and the cache) and take its
    promoted posts out of the feeds they were placed in."""
    account_id = int(args["account_id"])
    append_events(conn, purge_posts(conn, account_id))
    placed = conn.execute(
        text(
            "DELETE FROM campaign_placements cp USING campaigns c WHERE c.id = cp.campaign_id "
            "AND c.account_id = :a RETURNING cp.account_id, c.post_id"
        ),
        {"a": account_id},
    ).all()
    readers_of: dict[int, list[int]] = {}
    for reader, post_id in placed:
        readers_of.setdefault(post_id, []).append(reader)
    for post_id, readers in readers_of.items():
        append_events(conn, withdrawal_events(post_id, account_id, readers))
    return {}


@handles("feed", "purge_graph")
def purge_graph(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Remove the account's votes (counts corrected) and follows in both directions."""
    account_id = int(args["account_id"])
    unfollows = purge_follows(conn, account_id)
    append_events(conn, [*purge_votes(conn, account_id), *unfollows])
    former = {e.follower_id for e in unfollows if e.followee_id == str(account_id)}
    return {"former_followers": sorted(former | set(args.get("former_followers", [])))}


@handles("feed", "erase_account")
def erase(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    event = erase_account(conn, int(args["account_id"]))
    if event is not None:
        append_events(conn, [event])
    return {}
