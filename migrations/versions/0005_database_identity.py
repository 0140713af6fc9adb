"""The database's identity: one row with a random id, made when the database is.

The read model in Redis records which database (this id) and how far into its outbox (the
outbox position it has applied) it was built from. A read model built from another database,
or from this one before a restore took the outbox back, is rebuilt (``feed/origin.py``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "database_identity",
        sa.Column(
            "id", UUID(as_uuid=True), server_default=sa.text("gen_random_uuid()"), nullable=False
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_database_identity")),
    )
    op.execute("INSERT INTO database_identity DEFAULT VALUES")


def downgrade():
    op.drop_table("database_identity")
