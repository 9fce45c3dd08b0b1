"""Agents' last heartbeat (health, backlog), kept in PostgreSQL as the truth behind Redis.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE agents ADD COLUMN last_heartbeat JSONB")


def downgrade() -> None:
    op.execute("ALTER TABLE agents DROP COLUMN last_heartbeat")
