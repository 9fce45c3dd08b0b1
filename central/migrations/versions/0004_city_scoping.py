"""City scoping: which cities each user may see, and the built-in roles.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Permissions are strings "<resource>:<action>"; "*" is every permission and every city.
ROLES = {
    "00000000-0000-4000-8000-000000000001": ("admin", '["*"]'),
    "00000000-0000-4000-8000-000000000002": (
        "operador",
        '["cities:read", "cameras:read", "recordings:read", "plates:search", "clips:create",'
        ' "agents:read"]',
    ),
    "00000000-0000-4000-8000-000000000003": (
        "instalador",
        '["cities:read", "cameras:read", "cameras:admin", "agents:read", "agents:admin"]',
    ),
}


def upgrade() -> None:
    op.execute(
        "CREATE TABLE user_cidades ("
        " user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " cidade_id UUID NOT NULL REFERENCES cidades(id) ON DELETE CASCADE,"
        " PRIMARY KEY (user_id, cidade_id))"
    )
    op.execute("CREATE INDEX idx_user_cidades_cidade ON user_cidades(cidade_id)")
    insert = sa.text(
        "INSERT INTO roles (id, name, permissions) VALUES (CAST(:id AS uuid), :name,"
        " CAST(:permissions AS jsonb)) ON CONFLICT (name) DO NOTHING"
    )
    for role_id, (name, permissions) in ROLES.items():
        op.get_bind().execute(insert, {"id": role_id, "name": name, "permissions": permissions})


def downgrade() -> None:
    op.execute("DROP TABLE user_cidades")
    ids = {"ids": list(ROLES)}
    op.get_bind().execute(
        sa.text("DELETE FROM user_roles WHERE role_id = ANY(CAST(:ids AS uuid[]))"), ids
    )
    op.get_bind().execute(sa.text("DELETE FROM roles WHERE id = ANY(CAST(:ids AS uuid[]))"), ids)
