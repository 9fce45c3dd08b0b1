"""Segments carry their run and the quality of the agent's clock that stamped them.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = """
ALTER TABLE segments
    ADD COLUMN run_id UUID,
    ADD COLUMN time_source VARCHAR(16) NOT NULL DEFAULT 'live'
        CHECK (time_source IN ('live', 'recovered')),
    ADD COLUMN clock_sync VARCHAR(16) NOT NULL DEFAULT 'unknown'
        CHECK (clock_sync IN ('synced', 'unsynced', 'unknown')),
    ADD COLUMN clock_error_ms INTEGER CHECK (clock_error_ms >= 0),
    ADD COLUMN shifted_ms BIGINT NOT NULL DEFAULT 0 CHECK (shifted_ms >= 0)
"""


def upgrade() -> None:
    op.execute(COLUMNS)


def downgrade() -> None:
    op.execute(
        "ALTER TABLE segments DROP COLUMN run_id, DROP COLUMN time_source, "
        "DROP COLUMN clock_sync, DROP COLUMN clock_error_ms, DROP COLUMN shifted_ms"
    )
