"""Evidence crops of plate reads, uploaded by the agents by claim-check. A crop may arrive
before its read (they travel on separate queues), so it is kept under the read's id without a
foreign key; the plate detail endpoint joins them.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE lpr_crops (
            read_id UUID PRIMARY KEY,
            bucket VARCHAR(63) NOT NULL,
            object_key VARCHAR(512) NOT NULL,
            size_bytes BIGINT NOT NULL CHECK (size_bytes > 0),
            sha256 CHAR(64) NOT NULL,
            received_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE lpr_crops")
