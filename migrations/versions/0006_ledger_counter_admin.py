"""A credit's ledger entry names the admin who gave it: ``admin:<account id>`` needs more than
the 20 characters the counter account had.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    op.alter_column(
        "ledger_entries", "counter_account", type_=sa.String(40), existing_nullable=False
    )


def downgrade():
    op.alter_column(
        "ledger_entries", "counter_account", type_=sa.String(20), existing_nullable=False
    )
