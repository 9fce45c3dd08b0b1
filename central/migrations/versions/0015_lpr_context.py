"""A plate read's context frame (the whole scene of its evidence crop), kept beside the crop
when the agent's camera has ``lpr.context_frame`` on; crops by arrival, for the retention
sweep of crops whose read never arrived.

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE lpr_crops ADD COLUMN context_key VARCHAR(512)")
    op.execute("CREATE INDEX lpr_crops_received ON lpr_crops (received_at)")


def downgrade() -> None:
    op.execute("DROP INDEX lpr_crops_received")
    op.execute("ALTER TABLE lpr_crops DROP COLUMN context_key")
