"""Media: uploads stored on disk under the data directory, their type sniffed from the bytes
(never taken from the client), a per-account quota; attached to a post, detached, deleted."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import filetype
from sqlalchemy import Connection, func, insert, select, text, update

from feed.config import Settings
from feed.errors import InvalidInput
from sagas.schema import media
from sagas.services import StepContext, StepFailed, handles

ALLOWED_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "video/mp4"})


def media_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "media"


def store_upload(conn: Connection, settings: Settings, account_id: int, data: bytes) -> dict:
    """Keep an upload: sniff its type, check the quota, write the file, record it."""
    if not data:
        raise InvalidInput("The file is empty.", errors={"file": ["The file is empty."]})
    kind = filetype.guess(data)
    if kind is None or kind.mime not in ALLOWED_TYPES:
        raise InvalidInput(
            "Unsupported media type.",
            errors={"file": [f"Must be one of {', '.join(sorted(ALLOWED_TYPES))}."]},
        )
    # One upload of an account at a time from the sum to the insert: concurrent uploads each
    # saw the same room and all fitted into it. Released when the command's transaction ends.
    conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"media-quota:{account_id}"},
    )
    used = conn.execute(
        select(func.coalesce(func.sum(media.c.size), 0)).where(
            media.c.account_id == account_id, media.c.status != "deleted"
        )
    ).scalar_one()
    if used + len(data) > settings.media_quota_bytes:
        raise InvalidInput("Media quota exceeded.", errors={"file": ["Your media quota is full."]})
    media_id = uuid.uuid4()
    directory = media_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / str(media_id)).write_bytes(data)
    conn.execute(
        insert(media).values(
            id=media_id, account_id=account_id, content_type=kind.mime, size=len(data)
        )
    )
    return {"id": str(media_id), "size": len(data), "content_type": kind.mime}


def usable_for(conn: Connection, account_id: int, media_ids: list[str]) -> list[dict[str, Any]]:
    """The caller's own, not yet attached media with these ids; 422 naming the first other."""
    wanted = []
    for raw in media_ids:
        try:
            wanted.append(uuid.UUID(raw))
        except ValueError:
            raise InvalidInput(
                "Unknown media.", errors={"media_ids": [f"Unknown media id: {raw}"]}
            ) from None
    rows = {
        row["id"]: row
        for row in conn.execute(
            select(media).where(
                media.c.id.in_(wanted),
                media.c.account_id == account_id,
                media.c.status == "uploaded",
            )
        ).mappings()
    }
    for media_id in wanted:
        if media_id not in rows:
            raise InvalidInput(
                "Unknown media.", errors={"media_ids": [f"Unknown or used media id: {media_id}"]}
            )
    # In upload order: the order the rebuilt read model also uses.
    ordered = sorted(wanted, key=lambda m: (rows[m]["created_at"], str(m)))
    return [describe(rows[m]) for m in ordered]


def describe(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "content_type": row["content_type"],
        "size": row["size"],
        "url": f"/api/v1/media/{row['id']}",
    }


@handles("media", "attach")
def attach(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    ids = [uuid.UUID(m["id"]) for m in args.get("media", [])]
    post_id = int(args["post_id"])
    status = conn.execute(
        text("SELECT status FROM posts WHERE id = :id"), {"id": post_id}
    ).scalar_one_or_none()
    if status != "pending":
        raise StepFailed(f"the post is {status or 'gone'}, not pending")
    if not ids:
        return {}
    # Only files still free (or already this post's, on a repeat): one file, one post.
    attached = conn.execute(
        update(media)
        .where(
            media.c.id.in_(ids),
            media.c.account_id == int(args["account_id"]),
            (media.c.status == "uploaded") | (media.c.post_id == post_id),
        )
        .values(post_id=post_id, status="attached")
    ).rowcount
    if attached != len(ids):
        raise StepFailed("a media file is deleted or attached to another post")
    return {}


@handles("media", "detach")
def detach(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    conn.execute(
        update(media)
        .where(media.c.post_id == int(args["post_id"]), media.c.status == "attached")
        .values(post_id=None, status="uploaded")
    )
    return {}


@handles("media", "delete_all")
def delete_all(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Delete every file of an account (account deletion). Safe to repeat."""
    ids = (
        conn.execute(
            update(media)
            .where(media.c.account_id == int(args["account_id"]), media.c.status != "deleted")
            .values(status="deleted", post_id=None)
            .returning(media.c.id)
        )
        .scalars()
        .all()
    )
    directory = media_dir(ctx.services.settings)
    for media_id in ids:
        (directory / str(media_id)).unlink(missing_ok=True)
    return {"media_deleted": len(ids)}


def on_post_deleted(services, post_id: int) -> int:
    """A post was deleted (by its author or an admin): its media go with it. Safe to repeat."""
    with services.engine.begin() as conn:
        ids = (
            conn.execute(
                update(media)
                .where(media.c.post_id == post_id, media.c.status != "deleted")
                .values(status="deleted", post_id=None)
                .returning(media.c.id)
            )
            .scalars()
            .all()
        )
    directory = media_dir(services.settings)
    for media_id in ids:
        (directory / str(media_id)).unlink(missing_ok=True)
    return len(ids)


# Uploads never attached, older than the cutoff, and named by no saga still running (a post
# with media waiting for its attach step): deleted, each account's quota freed.
UNATTACHED = text(
    "UPDATE media m SET status = 'deleted' WHERE m.status = 'uploaded' AND m.post_id IS NULL "
    "AND m.created_at < now() - make_interval(secs => :seconds) AND NOT EXISTS ("
    " SELECT 1 FROM sagas s WHERE s.status NOT IN ('completed', 'compensated')"
    " AND strpos(s.data::text, m.id::text) > 0) RETURNING m.id"
)


def sweep_unattached(conn: Connection, settings: Settings) -> int:
    """Delete uploads left unattached for ``MEDIA_UNATTACHED_HOURS``, files included; returns
    how many went. Safe to repeat, and to run in several processes."""
    ids = conn.execute(UNATTACHED, {"seconds": settings.media_unattached_hours * 3600}).scalars()
    directory = media_dir(settings)
    removed = 0
    for media_id in ids:
        (directory / str(media_id)).unlink(missing_ok=True)
        removed += 1
    return removed
