"""Recordings kept from ingested segments, and clips (exports) with their worker's state.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The seed's streams/recordings/clips columns stay as written; these columns extend them
# (docs/design/clips.md). A recording is one run of a camera (recordings.id = segments.run_id).
UP = """
CREATE UNIQUE INDEX idx_streams_camera_source ON streams (camera_id, source_url);
ALTER TABLE recordings
    ADD COLUMN camera_id UUID REFERENCES cameras(id) ON DELETE CASCADE,
    ADD COLUMN segments INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN duration_ms BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN size_bytes BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN first_start TIMESTAMPTZ,
    ADD COLUMN last_end TIMESTAMPTZ;
CREATE INDEX idx_recordings_camera_started ON recordings (camera_id, started_at);
CREATE INDEX idx_recordings_open ON recordings (last_end) WHERE status = 'RECORDING';
ALTER TABLE segments ADD COLUMN recording_id UUID;
ALTER TABLE clips ALTER COLUMN recording_id DROP NOT NULL;
ALTER TABLE clips
    ADD COLUMN camera_id UUID REFERENCES cameras(id) ON DELETE CASCADE,
    ADD COLUMN requested_by UUID REFERENCES users(id) ON DELETE SET NULL,
    ADD COLUMN keep BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN reason VARCHAR(1000),
    ADD COLUMN gaps JSONB NOT NULL DEFAULT '[]',
    ADD COLUMN segments INTEGER,
    ADD COLUMN duration_ms INTEGER,
    ADD COLUMN size_bytes BIGINT,
    ADD COLUMN sha256 CHAR(64),
    ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN next_check_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN upload_requested_at TIMESTAMPTZ,
    ADD COLUMN finished_at TIMESTAMPTZ,
    ADD CONSTRAINT clips_status CHECK (status IN ('PENDING', 'READY', 'FAILED'));
CREATE INDEX idx_clips_camera_created ON clips (camera_id, created_at DESC);
CREATE INDEX idx_clips_pending ON clips (next_check_at) WHERE status = 'PENDING'
"""

DOWN = """
DROP INDEX idx_clips_pending;
DROP INDEX idx_clips_camera_created;
ALTER TABLE clips DROP CONSTRAINT clips_status, DROP COLUMN camera_id, DROP COLUMN requested_by,
    DROP COLUMN keep, DROP COLUMN reason, DROP COLUMN gaps, DROP COLUMN segments,
    DROP COLUMN duration_ms, DROP COLUMN size_bytes, DROP COLUMN sha256, DROP COLUMN attempts,
    DROP COLUMN next_check_at, DROP COLUMN upload_requested_at, DROP COLUMN finished_at;
DELETE FROM clips WHERE recording_id IS NULL;
ALTER TABLE clips ALTER COLUMN recording_id SET NOT NULL;
ALTER TABLE segments DROP COLUMN recording_id;
DROP INDEX idx_recordings_open;
DROP INDEX idx_recordings_camera_started;
ALTER TABLE recordings DROP COLUMN camera_id, DROP COLUMN segments, DROP COLUMN duration_ms,
    DROP COLUMN size_bytes, DROP COLUMN first_start, DROP COLUMN last_end;
DROP INDEX idx_streams_camera_source
"""


def _run(script: str) -> None:
    # asyncpg prepares each statement: one command per call.
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _run(UP)


def downgrade() -> None:
    _run(DOWN)
