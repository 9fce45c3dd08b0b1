"""Config hints central → agent: a camera can be disabled at central, an agent can get an
upload cap, each agent has a config hint version; which version of each versioned command
(watchlists, config hints) every agent was sent is kept in one table.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def _run(script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _run(
        """
        ALTER TABLE cameras ADD COLUMN enabled BOOLEAN NOT NULL DEFAULT TRUE;
        ALTER TABLE agents
            ADD COLUMN max_upload_mbps DOUBLE PRECISION
                CHECK (max_upload_mbps > 0 AND max_upload_mbps <= 100000),
            ADD COLUMN config_version BIGINT NOT NULL DEFAULT 0;
        CREATE TABLE agent_commands_sent (
            agent_id UUID NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
            kind VARCHAR(40) NOT NULL,
            version BIGINT NOT NULL,
            sent_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (agent_id, kind)
        );
        INSERT INTO agent_commands_sent (agent_id, kind, version, sent_at)
            SELECT agent_id, 'watchlist_update', version, sent_at FROM agent_watchlists;
        DROP TABLE agent_watchlists;
        """
    )


def downgrade() -> None:
    _run(
        """
        CREATE TABLE agent_watchlists (
            agent_id UUID PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
            version BIGINT NOT NULL,
            sent_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        INSERT INTO agent_watchlists (agent_id, version, sent_at)
            SELECT agent_id, version, sent_at FROM agent_commands_sent
            WHERE kind = 'watchlist_update';
        DROP TABLE agent_commands_sent;
        ALTER TABLE agents DROP COLUMN config_version, DROP COLUMN max_upload_mbps;
        ALTER TABLE cameras DROP COLUMN enabled;
        """
    )
