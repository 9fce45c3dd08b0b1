"""Camera status as its agent reports it: why, and when it was last reported.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE cameras ADD COLUMN status_reason VARCHAR(200),"
        " ADD COLUMN status_at TIMESTAMPTZ"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE cameras DROP COLUMN status_reason, DROP COLUMN status_at")
