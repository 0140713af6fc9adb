"""The outbox wakes the relay itself: a statement trigger sends NOTIFY outbox on insert.

Before, each command sent ``SELECT pg_notify(...)`` after writing its events: one more round trip
per command. The notification is still delivered only when the transaction commits.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.execute(
        """
        CREATE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          PERFORM pg_notify('outbox', '');
          RETURN NULL;
        END
        $$;
        CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
          FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();
        """
    )


def downgrade():
    op.execute("DROP TRIGGER outbox_notify ON outbox; DROP FUNCTION notify_outbox();")
