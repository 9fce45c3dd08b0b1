"""Watchlists of plates per city, the alerts agents raise on them, and their permissions.

Revision ID: 0009
Revises: 0008
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UP = """
CREATE TABLE watchlists (
    id UUID PRIMARY KEY,
    cidade_id UUID NOT NULL REFERENCES cidades(id) ON DELETE CASCADE,
    name VARCHAR(100) NOT NULL,
    created_by UUID REFERENCES users(id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (cidade_id, name)
);
CREATE TABLE watchlist_entries (
    watchlist_id UUID NOT NULL REFERENCES watchlists(id) ON DELETE CASCADE,
    plate VARCHAR(10) NOT NULL CHECK (plate ~ '^[A-Z]{3}[0-9][A-Z0-9][0-9]{2}$'),
    reason VARCHAR(200) NOT NULL DEFAULT '',
    added_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (watchlist_id, plate)
);
CREATE INDEX idx_watchlist_entries_plate ON watchlist_entries (plate);
CREATE TABLE watchlist_versions (
    cidade_id UUID PRIMARY KEY REFERENCES cidades(id) ON DELETE CASCADE,
    version BIGINT NOT NULL
);
CREATE TABLE alerts (
    id UUID PRIMARY KEY,
    cidade_id UUID NOT NULL REFERENCES cidades(id) ON DELETE CASCADE,
    camera_id UUID NOT NULL REFERENCES cameras(id) ON DELETE CASCADE,
    agent_id UUID NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    read_id UUID NOT NULL,
    plate VARCHAR(10) NOT NULL,
    listed_plate VARCHAR(10) NOT NULL,
    match VARCHAR(10) NOT NULL CHECK (match IN ('exact', 'possible')),
    detected_at TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    acknowledged_by UUID REFERENCES users(id) ON DELETE SET NULL,
    acknowledged_at TIMESTAMPTZ
);
CREATE INDEX idx_alerts_city_detected ON alerts (cidade_id, detected_at DESC);
CREATE INDEX idx_alerts_open ON alerts (cidade_id, detected_at DESC) WHERE acknowledged_at IS NULL
"""

# Permissions added to the built-in roles (0004): operators run watchlists and see alerts.
GRANTS = {
    "operador": ["watchlists:read", "watchlists:admin", "alerts:read"],
    "instalador": ["alerts:read"],
}


def upgrade() -> None:
    for statement in UP.split(";\n"):
        if statement.strip():
            op.execute(statement)
    grant = sa.text(
        "UPDATE roles SET permissions = coalesce(permissions, '[]'::jsonb) || CAST(:add AS jsonb)"
        " WHERE name = :name AND NOT coalesce(permissions, '[]'::jsonb) @> CAST(:add AS jsonb)"
    )
    for name, add in GRANTS.items():
        op.get_bind().execute(grant, {"name": name, "add": json.dumps(add)})


def downgrade() -> None:
    op.execute("DROP TABLE alerts, watchlist_versions, watchlist_entries, watchlists")
    revoke = sa.text(
        "UPDATE roles SET permissions = (SELECT coalesce(jsonb_agg(p), '[]'::jsonb)"
        " FROM jsonb_array_elements_text(permissions) p WHERE NOT p = ANY(CAST(:drop AS text[])))"
        " WHERE name = :name"
    )
    for name, drop in GRANTS.items():
        op.get_bind().execute(revoke, {"name": name, "drop": drop})
