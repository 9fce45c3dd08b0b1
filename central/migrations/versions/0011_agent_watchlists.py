"""Which watchlist version each agent has been sent (the command channel's delivery state).

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE agent_watchlists ("
        " agent_id UUID PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,"
        " version BIGINT NOT NULL,"
        " sent_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )


def downgrade() -> None:
    op.execute("DROP TABLE agent_watchlists")
