"""Loss events: video an agent recorded but central will never receive (evicted unsynced under
the agent's disk budget, or a file that vanished or was corrupt).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE loss_events (
            id UUID PRIMARY KEY,
            agent_id UUID NOT NULL,
            camera_id UUID NOT NULL REFERENCES cameras(id) ON DELETE CASCADE,
            cidade_id UUID NOT NULL REFERENCES cidades(id) ON DELETE CASCADE,
            start_time TIMESTAMPTZ NOT NULL,
            end_time TIMESTAMPTZ NOT NULL,
            segments INTEGER NOT NULL CHECK (segments > 0),
            size_bytes BIGINT NOT NULL CHECK (size_bytes >= 0),
            reason VARCHAR(20) NOT NULL
                CHECK (reason IN ('disk_budget', 'file_missing', 'corrupt')),
            received_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
            CHECK (end_time >= start_time)
        )
        """
    )
    op.execute("CREATE INDEX idx_loss_events_camera_start ON loss_events (camera_id, start_time)")
    op.execute("CREATE INDEX idx_loss_events_cidade ON loss_events (cidade_id)")


def downgrade() -> None:
    op.execute("DROP TABLE loss_events")
