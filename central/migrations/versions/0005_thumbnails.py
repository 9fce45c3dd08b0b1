"""Each camera's latest thumbnail (for mosaics).

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE cameras ADD COLUMN thumbnail_key VARCHAR(512)")
    op.execute("ALTER TABLE cameras ADD COLUMN thumbnail_at TIMESTAMPTZ")


def downgrade() -> None:
    op.execute("ALTER TABLE cameras DROP COLUMN thumbnail_at")
    op.execute("ALTER TABLE cameras DROP COLUMN thumbnail_key")
