"""Each feed defined once, in PostgreSQL's terms: what a home feed and an account's list of
posts hold. A key's rebuild, a page answered from PostgreSQL (a consistency-token read that
timed out) and a saga's repair all ask these, so the copies cannot drift apart.

The posts placed in home feeds by something other than follows (the sagas' promotions) are
``Placements`` handed to ``FeedSources`` when a process builds its services; the feed does not
know whose tables they read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, text

# Bounds that let every post through: ids are positive 64-bit integers.
NO_MAX_ID, NO_SINCE_ID = 2**63 - 1, 0


@dataclass(frozen=True)
class Placements:
    """A source of posts placed in home feeds: SQL selecting ``account_id`` (whose feed) and
    ``post_id`` (a published post), as PostgreSQL holds them now."""

    sql: str


class FeedSources:
    """The home feed and an account's posts as PostgreSQL defines them, newest first."""

    def __init__(self, placements: Sequence[Placements] = ()) -> None:
        self.placements = tuple(placements)
        in_bounds = "id < :max_id AND id > :since_id"
        placed = "".join(
            f" UNION SELECT post_id FROM ({source.sql}) placed WHERE account_id = :me"
            " AND post_id < :max_id AND post_id > :since_id"
            for source in self.placements
        )
        # Each author's newest posts come from the (author_id, id DESC) index (a LATERAL
        # join), so the cost follows the accounts followed, not the size of the posts table.
        self._home = text(
            "SELECT id FROM ("
            " SELECT p.id FROM (SELECT followee_id AS author FROM follows"
            "  WHERE follower_id = :me UNION ALL SELECT CAST(:me AS bigint)) f"
            " CROSS JOIN LATERAL (SELECT id FROM posts WHERE author_id = f.author"
            f"  AND status = 'published' AND {in_bounds} ORDER BY id DESC LIMIT :n) p"
            + placed
            + ") feed ORDER BY id DESC LIMIT :n"
        )
        self._authored = text(
            "SELECT id FROM posts WHERE author_id = :author AND status = 'published' "
            f"AND {in_bounds} ORDER BY id DESC LIMIT :n"
        )
        self._placed_in = (
            text(
                "SELECT DISTINCT account_id FROM ("
                + " UNION ALL ".join(source.sql for source in self.placements)
                + ") placed WHERE post_id = :post AND account_id = ANY(:owners)"
            )
            if self.placements
            else None
        )

    def home(
        self,
        db: Connection,
        account_id: int,
        limit: int,
        *,
        max_id: int | None = None,
        since_id: int | None = None,
    ) -> list[int]:
        """The newest ``limit`` posts of the account's home feed between the bounds: its own,
        those of the accounts it follows, and those placed in it."""
        params = {"me": account_id, "n": limit, **_bounds(max_id, since_id)}
        return list(db.execute(self._home, params).scalars())

    def authored(
        self,
        db: Connection,
        account_id: int,
        limit: int | None = None,
        *,
        max_id: int | None = None,
        since_id: int | None = None,
    ) -> list[int]:
        """The account's newest published posts between the bounds (all with no ``limit``)."""
        params = {"author": account_id, "n": limit, **_bounds(max_id, since_id)}
        return list(db.execute(self._authored, params).scalars())

    def placed_in(self, db: Connection, post_id: int, owners: Sequence[int]) -> list[int]:
        """The subset of ``owners`` whose feeds a source places ``post_id`` in now."""
        if self._placed_in is None or not owners:
            return []
        params = {"post": post_id, "owners": list(owners)}
        return list(db.execute(self._placed_in, params).scalars())


def _bounds(max_id: int | None, since_id: int | None) -> dict[str, int]:
    return {
        "max_id": NO_MAX_ID if max_id is None else max_id,
        "since_id": NO_SINCE_ID if since_id is None else since_id,
    }
