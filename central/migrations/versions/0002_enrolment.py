"""Enrolment: one-time tokens that an installer exchanges for an agent's credentials.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UP = """
CREATE TABLE enrolment_tokens (
    id UUID PRIMARY KEY,
    cidade_id UUID NOT NULL REFERENCES cidades(id) ON DELETE CASCADE,
    nome VARCHAR(255) NOT NULL,
    token_sha256 CHAR(64) UNIQUE NOT NULL,
    created_by UUID REFERENCES users(id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ,
    agent_id UUID REFERENCES agents(id) ON DELETE SET NULL
);
CREATE INDEX idx_enrolment_tokens_cidade ON enrolment_tokens(cidade_id);
ALTER TABLE agents ADD COLUMN revoked_at TIMESTAMPTZ
"""


def upgrade() -> None:
    for statement in UP.split(";"):
        op.execute(statement)


def downgrade() -> None:
    op.execute("ALTER TABLE agents DROP COLUMN revoked_at")
    op.execute("DROP TABLE enrolment_tokens")
