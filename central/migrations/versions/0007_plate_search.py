"""Plate search at tens of millions of reads, and the audit log.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UP = """
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE FUNCTION plate_skeleton(plate text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT translate(upper(plate), 'OQDIBSZGT', '000185267') $$;
CREATE INDEX idx_lpr_plate_trgm ON lpr_events USING gin (plate gin_trgm_ops);
CREATE INDEX idx_lpr_plate_skeleton ON lpr_events (plate_skeleton(plate));
CREATE INDEX idx_lpr_plate_prefix ON lpr_events (plate varchar_pattern_ops);
CREATE INDEX idx_lpr_city_detected ON lpr_events (city_id, detected_at DESC);
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    user_id UUID REFERENCES users(id) ON DELETE SET NULL,
    action VARCHAR(64) NOT NULL,
    details JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_audit_log_at ON audit_log (at DESC);
CREATE INDEX idx_audit_log_user ON audit_log (user_id, at DESC)
"""


def upgrade() -> None:
    # One statement per call (asyncpg); the function body holds no ';'.
    for statement in UP.split(";\n"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE audit_log")
    for index in ("trgm", "skeleton", "prefix"):
        op.execute(f"DROP INDEX idx_lpr_plate_{index}")
    op.execute("DROP INDEX idx_lpr_city_detected")
    op.execute("DROP FUNCTION plate_skeleton(text)")
