"""Participants remember which saga step (not only which attempt) they ran.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("processed_steps", sa.Column("saga_id", postgresql.UUID(as_uuid=True), nullable=True))
    op.add_column("processed_steps", sa.Column("step_index", sa.SmallInteger(), nullable=True))
    op.add_column("processed_steps", sa.Column("kind", sa.String(12), nullable=True))
    op.create_index("ix_processed_steps_saga_id_step_index", "processed_steps", ["saga_id", "step_index"])


def downgrade():
    op.drop_index("ix_processed_steps_saga_id_step_index", table_name="processed_steps")
    op.drop_column("processed_steps", "kind")
    op.drop_column("processed_steps", "step_index")
    op.drop_column("processed_steps", "saga_id")
