"""The write model's tables (SQLAlchemy 2 Core), created only by the Alembic migrations."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: Time-ordered 64-bit ids come from the ``next_id()`` SQL function (see the first migration).
NEXT_ID = text("next_id()")

accounts = Table(
    "accounts",
    metadata,
    Column("id", BigInteger, primary_key=True, server_default=NEXT_ID),
    Column("handle", String(30), nullable=False, unique=True),
    Column("display_name", String(50), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("is_admin", Boolean, nullable=False, server_default=text("false")),
    Column("status", String(16), nullable=False, server_default="active"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_active_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("followers_count", Integer, nullable=False, server_default="0"),
    Column("following_count", Integer, nullable=False, server_default="0"),
    Column("posts_count", Integer, nullable=False, server_default="0"),
    Column("counts_version", BigInteger, nullable=False, server_default="0"),
    # Tokens issued before this no longer open the API (set by a password change).
    Column("tokens_valid_after", DateTime(timezone=True)),
    CheckConstraint("status IN ('active', 'disabled', 'deleted')", name="status"),
)

# One row per login: its refresh-token family (feed/sessions.py). Only the current refresh
# token's SHA-256 is kept.
account_sessions = Table(
    "account_sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column(
        "account_id",
        BigInteger,
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("generation", Integer, nullable=False, server_default="0"),
    Column("refresh_hash", LargeBinary, nullable=False),
    Column("rotated_at", DateTime(timezone=True), nullable=False),
    Column("access_issued_at", BigInteger, nullable=False),
    Column("refresh_expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
)

posts = Table(
    "posts",
    metadata,
    Column("id", BigInteger, primary_key=True, server_default=NEXT_ID),
    Column("author_id", BigInteger, ForeignKey("accounts.id"), nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False, server_default="published"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime(timezone=True)),
    Column("up", Integer, nullable=False, server_default="0"),
    Column("down", Integer, nullable=False, server_default="0"),
    Column("votes_version", BigInteger, nullable=False, server_default="0"),
    CheckConstraint("status IN ('pending', 'published', 'rejected', 'deleted')", name="status"),
    Index("ix_posts_author_id_id", "author_id", text("id DESC")),
)

follows = Table(
    "follows",
    metadata,
    Column("follower_id", BigInteger, ForeignKey("accounts.id"), primary_key=True),
    Column("followee_id", BigInteger, ForeignKey("accounts.id"), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("follower_id <> followee_id", name="not_self"),
    Index("ix_follows_followee_id_follower_id", "followee_id", "follower_id"),
)

votes = Table(
    "votes",
    metadata,
    Column("account_id", BigInteger, ForeignKey("accounts.id"), primary_key=True),
    Column("post_id", BigInteger, ForeignKey("posts.id"), primary_key=True),
    Column("value", SmallInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("value IN (-1, 1)", name="value"),
    Index("ix_votes_post_id", "post_id"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("position", BigInteger, Identity(always=True), primary_key=True),
    Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    Column("type", String(64), nullable=False),
    Column("version", SmallInteger, nullable=False),
    Column("aggregate_id", String(64), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("correlation_id", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True)),
    Index(
        "ix_outbox_unpublished",
        "position",
        postgresql_where=text("published_at IS NULL"),
    ),
)

# One row, made with the database: which database a read model was built from (feed/origin.py).
database_identity = Table(
    "database_identity",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # The account the key belongs to, or "anon:<address>" for register and log in.
    Column("scope", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("status_code", SmallInteger, nullable=False),
    Column("body", JSONB),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_idempotency_keys_created_at", "created_at"),
)
