"""Saga tables (instances, step attempts, operator actions) and the participants' own tables.

They share ``feed.schema.metadata`` so that one Alembic history creates everything.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from feed.schema import NEXT_ID, metadata

STATUSES = ("running", "compensating", "completed", "compensated", "failed", "stuck")

sagas = Table(
    "sagas",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("type", String(40), nullable=False),
    Column("version", SmallInteger, nullable=False),
    Column("account_id", BigInteger),
    Column("status", String(16), nullable=False),
    Column("direction", String(10), nullable=False, server_default="forward"),
    Column("current_step", SmallInteger, nullable=False, server_default="0"),
    Column("data", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("completed_steps", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("last_error", Text),
    Column("retry_at", DateTime(timezone=True)),
    Column("deadline", DateTime(timezone=True), nullable=False),
    Column("lock_version", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "status IN ('running', 'compensating', 'completed', 'compensated', 'failed', 'stuck')",
        name="status",
    ),
    Index("ix_sagas_status_type", "status", "type"),
    Index("ix_sagas_account_id", "account_id"),
)

saga_steps = Table(
    "saga_steps",
    metadata,
    Column("step_id", UUID(as_uuid=True), primary_key=True),
    Column("saga_id", UUID(as_uuid=True), ForeignKey("sagas.id"), nullable=False),
    Column("step_index", SmallInteger, nullable=False),
    Column("name", String(60), nullable=False),
    Column("kind", String(12), nullable=False),
    Column("attempt", SmallInteger, nullable=False),
    Column("status", String(12), nullable=False),
    Column("command", JSONB, nullable=False),
    Column("reply", JSONB),
    Column("error", Text),
    Column("sent_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("timeout_at", DateTime(timezone=True), nullable=False),
    Column("replied_at", DateTime(timezone=True)),
    CheckConstraint(
        "status IN ('sent', 'succeeded', 'failed', 'timed_out', 'superseded')", name="status"
    ),
    Index("ix_saga_steps_saga_id", "saga_id", "sent_at"),
    Index("ix_saga_steps_waiting", "timeout_at", postgresql_where=text("status = 'sent'")),
)

saga_operator_actions = Table(
    "saga_operator_actions",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("saga_id", UUID(as_uuid=True), ForeignKey("sagas.id"), nullable=False),
    Column("operator", String(64), nullable=False),
    Column("action", String(20), nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_saga_operator_actions_saga_id", "saga_id"),
)

processed_steps = Table(
    "processed_steps",
    metadata,
    Column("step_id", UUID(as_uuid=True), primary_key=True),
    Column("service", String(20), nullable=False),
    Column("reply", JSONB, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # which step of which saga (every attempt of a step shares these)
    Column("saga_id", UUID(as_uuid=True)),
    Column("step_index", SmallInteger),
    Column("kind", String(12)),
    Index("ix_processed_steps_saga_id_step_index", "saga_id", "step_index"),
)

participant_faults = Table(
    "participant_faults",
    metadata,
    Column("service", String(20), primary_key=True),
    Column("action", String(40), primary_key=True),
    Column("mode", String(10), nullable=False),
    Column("remaining", Integer, nullable=False),
    CheckConstraint("mode IN ('transient', 'permanent')", name="mode"),
)

wallets = Table(
    "wallets",
    metadata,
    Column("account_id", BigInteger, primary_key=True),
    Column("balance", BigInteger, nullable=False, server_default="0"),
    Column("status", String(10), nullable=False, server_default="open"),
    CheckConstraint("balance >= 0", name="balance_not_negative"),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("account_id", BigInteger, nullable=False),
    Column("kind", String(10), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("saga_id", UUID(as_uuid=True)),
    Column("counter_account", String(40), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("kind IN ('credit', 'debit', 'refund')", name="kind"),
    CheckConstraint("amount > 0", name="amount_positive"),
    Index("ix_ledger_entries_account_id", "account_id", "id"),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", BigInteger, primary_key=True, server_default=NEXT_ID),
    Column("account_id", BigInteger, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_notifications_account_id", "account_id", "id"),
)

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("saga_id", UUID(as_uuid=True), nullable=False),
    Column("post_id", BigInteger, nullable=False),
    Column("account_id", BigInteger, nullable=False),
    Column("credits", BigInteger, nullable=False),
    Column("status", String(12), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("status IN ('active', 'completed', 'cancelled')", name="status"),
    UniqueConstraint("saga_id"),
)

campaign_placements = Table(
    "campaign_placements",
    metadata,
    Column("campaign_id", UUID(as_uuid=True), ForeignKey("campaigns.id"), primary_key=True),
    Column("account_id", BigInteger, primary_key=True),
    Index("ix_campaign_placements_account_id", "account_id"),
)

media = Table(
    "media",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("account_id", BigInteger, nullable=False),
    Column("post_id", BigInteger),
    Column("content_type", String(40), nullable=False),
    Column("size", Integer, nullable=False),
    Column("status", String(10), nullable=False, server_default="uploaded"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("status IN ('uploaded', 'attached', 'deleted')", name="status"),
    Index("ix_media_account_id", "account_id"),
    Index("ix_media_post_id", "post_id"),
)

# The operators' web sessions (sagas/admin): the cookie holds a random id, this table its hash,
# so a logout revokes it and a database reader cannot use one.
admin_sessions = Table(
    "admin_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("account_id", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_admin_sessions_account_id", "account_id"),
)
