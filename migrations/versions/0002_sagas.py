"""Sagas: instances, step attempts, operator actions; the participants' own tables.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSONB = postgresql.JSONB(astext_type=sa.Text())
UUID = postgresql.UUID(as_uuid=True)
NOW = sa.func.now()


def upgrade():
    op.create_table(
        "sagas",
        sa.Column("id", UUID, nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("version", sa.SmallInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("direction", sa.String(10), server_default="forward", nullable=False),
        sa.Column("current_step", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("data", JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("completed_steps", JSONB, server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lock_version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint(
            "status IN ('running', 'compensating', 'completed', 'compensated', 'failed', 'stuck')",
            name=op.f("ck_sagas_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sagas")),
    )
    op.create_index("ix_sagas_status_type", "sagas", ["status", "type"])
    op.create_index("ix_sagas_account_id", "sagas", ["account_id"])
    op.create_table(
        "saga_steps",
        sa.Column("step_id", UUID, nullable=False),
        sa.Column("saga_id", UUID, nullable=False),
        sa.Column("step_index", sa.SmallInteger(), nullable=False),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("attempt", sa.SmallInteger(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("command", JSONB, nullable=False),
        sa.Column("reply", JSONB, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("timeout_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replied_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('sent', 'succeeded', 'failed', 'timed_out', 'superseded')",
            name=op.f("ck_saga_steps_status"),
        ),
        sa.ForeignKeyConstraint(["saga_id"], ["sagas.id"], name=op.f("fk_saga_steps_saga_id_sagas")),
        sa.PrimaryKeyConstraint("step_id", name=op.f("pk_saga_steps")),
    )
    op.create_index("ix_saga_steps_saga_id", "saga_steps", ["saga_id", "sent_at"])
    op.create_index(
        "ix_saga_steps_waiting", "saga_steps", ["timeout_at"], postgresql_where=sa.text("status = 'sent'")
    )
    op.create_table(
        "saga_operator_actions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("saga_id", UUID, nullable=False),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("detail", JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["saga_id"], ["sagas.id"], name=op.f("fk_saga_operator_actions_saga_id_sagas")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_saga_operator_actions")),
    )
    op.create_index("ix_saga_operator_actions_saga_id", "saga_operator_actions", ["saga_id"])
    # Every participant records the steps it ran, so a step delivered twice runs once.
    op.create_table(
        "processed_steps",
        sa.Column("step_id", UUID, nullable=False),
        sa.Column("service", sa.String(20), nullable=False),
        sa.Column("reply", JSONB, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("step_id", name=op.f("pk_processed_steps")),
    )
    op.create_table(
        "participant_faults",
        sa.Column("service", sa.String(20), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("mode", sa.String(10), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.CheckConstraint("mode IN ('transient', 'permanent')", name=op.f("ck_participant_faults_mode")),
        sa.PrimaryKeyConstraint("service", "action", name=op.f("pk_participant_faults")),
    )
    # billing: a wallet per account, and its double-entry ledger
    op.create_table(
        "wallets",
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("balance", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("status", sa.String(10), server_default="open", nullable=False),
        sa.CheckConstraint("balance >= 0", name=op.f("ck_wallets_balance_not_negative")),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_wallets")),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("saga_id", UUID, nullable=True),
        sa.Column("counter_account", sa.String(20), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint("kind IN ('credit', 'debit', 'refund')", name=op.f("ck_ledger_entries_kind")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_ledger_entries_amount_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    op.create_index("ix_ledger_entries_account_id", "ledger_entries", ["account_id", "id"])
    # notifications
    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger(), server_default=sa.text("next_id()"), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    op.create_index("ix_notifications_account_id", "notifications", ["account_id", "id"])
    # feed: promotion campaigns and where they placed a post
    op.create_table(
        "campaigns",
        sa.Column("id", UUID, nullable=False),
        sa.Column("saga_id", UUID, nullable=False),
        sa.Column("post_id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'completed', 'cancelled')", name=op.f("ck_campaigns_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
        sa.UniqueConstraint("saga_id", name=op.f("uq_campaigns_saga_id")),
    )
    op.create_table(
        "campaign_placements",
        sa.Column("campaign_id", UUID, nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_campaign_placements_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("campaign_id", "account_id", name=op.f("pk_campaign_placements")),
    )
    op.create_index("ix_campaign_placements_account_id", "campaign_placements", ["account_id"])


    op.create_table(
        "media",
        sa.Column("id", UUID, nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("post_id", sa.BigInteger(), nullable=True),
        sa.Column("content_type", sa.String(40), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(10), server_default="uploaded", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint(
            "status IN ('uploaded', 'attached', 'deleted')", name=op.f("ck_media_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_media")),
    )
    op.create_index("ix_media_account_id", "media", ["account_id"])
    op.create_index("ix_media_post_id", "media", ["post_id"])


def downgrade():
    for table in (
        "media", "campaign_placements", "campaigns", "notifications", "ledger_entries", "wallets", "participant_faults",
        "processed_steps", "saga_operator_actions", "saga_steps", "sagas",
    ):
        op.drop_table(table)
