"""The write model: accounts, posts, follows, votes, the outbox, idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Time-ordered 64-bit ids: milliseconds since 2026-01-01 in the high 41 bits, then a 22-bit
# sequence. A newer id is larger (up to 4,194,304 ids in one millisecond).
NEXT_ID_FUNCTION = """
CREATE FUNCTION next_id() RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT ((floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - 1767225600000) << 22)
           | (nextval('id_sequence') % 4194304)
$$
"""


def upgrade():
    op.execute("CREATE SEQUENCE id_sequence")
    op.execute(NEXT_ID_FUNCTION)
    op.create_table(
        "accounts",
        sa.Column("id", sa.BigInteger(), server_default=sa.text("next_id()"), nullable=False),
        sa.Column("handle", sa.String(length=30), nullable=False),
        sa.Column("display_name", sa.String(length=50), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("is_admin", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_active_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("followers_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("following_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("posts_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("counts_version", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint("status IN ('active', 'disabled', 'deleted')", name=op.f("ck_accounts_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("handle", name=op.f("uq_accounts_handle")),
    )
    op.create_table(
        "posts",
        sa.Column("id", sa.BigInteger(), server_default=sa.text("next_id()"), nullable=False),
        sa.Column("author_id", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="published", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("up", sa.Integer(), server_default="0", nullable=False),
        sa.Column("down", sa.Integer(), server_default="0", nullable=False),
        sa.Column("votes_version", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'published', 'rejected', 'deleted')", name=op.f("ck_posts_status")
        ),
        sa.ForeignKeyConstraint(["author_id"], ["accounts.id"], name=op.f("fk_posts_author_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_posts")),
    )
    op.create_index("ix_posts_author_id_id", "posts", ["author_id", sa.text("id DESC")])
    op.create_table(
        "follows",
        sa.Column("follower_id", sa.BigInteger(), nullable=False),
        sa.Column("followee_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("follower_id <> followee_id", name=op.f("ck_follows_not_self")),
        sa.ForeignKeyConstraint(["followee_id"], ["accounts.id"], name=op.f("fk_follows_followee_id_accounts")),
        sa.ForeignKeyConstraint(["follower_id"], ["accounts.id"], name=op.f("fk_follows_follower_id_accounts")),
        sa.PrimaryKeyConstraint("follower_id", "followee_id", name=op.f("pk_follows")),
    )
    op.create_index("ix_follows_followee_id_follower_id", "follows", ["followee_id", "follower_id"])
    op.create_table(
        "votes",
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("post_id", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.SmallInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("value IN (-1, 1)", name=op.f("ck_votes_value")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_votes_account_id_accounts")),
        sa.ForeignKeyConstraint(["post_id"], ["posts.id"], name=op.f("fk_votes_post_id_posts")),
        sa.PrimaryKeyConstraint("account_id", "post_id", name=op.f("pk_votes")),
    )
    op.create_index("ix_votes_post_id", "votes", ["post_id"])
    op.create_table(
        "outbox",
        sa.Column("position", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("version", sa.SmallInteger(), nullable=False),
        sa.Column("aggregate_id", sa.String(length=64), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("correlation_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_id")),
    )
    op.create_index(
        "ix_outbox_unpublished", "outbox", ["position"], postgresql_where=sa.text("published_at IS NULL")
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("headers", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade():
    op.drop_table("idempotency_keys")
    op.drop_table("outbox")
    op.drop_table("votes")
    op.drop_table("follows")
    op.drop_table("posts")
    op.drop_table("accounts")
    op.execute("DROP FUNCTION next_id()")
    op.execute("DROP SEQUENCE id_sequence")
