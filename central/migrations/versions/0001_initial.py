"""The seed's tables as written, plus agents and segments for the first end-to-end slice.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The seed's DDL, verbatim in columns, constraints and indexes (docs/design/overview.md).
SEED = """
CREATE TABLE users (
    id UUID PRIMARY KEY,
    email VARCHAR(255) UNIQUE NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    is_active BOOLEAN DEFAULT TRUE,
    created_at TIMESTAMP DEFAULT NOW()
);
CREATE TABLE roles (
    id UUID PRIMARY KEY,
    name VARCHAR(100) UNIQUE NOT NULL,
    permissions JSONB
);
CREATE TABLE user_roles (
    user_id UUID REFERENCES users(id),
    role_id UUID REFERENCES roles(id),
    PRIMARY KEY (user_id, role_id)
);
CREATE TABLE cidades (
    id UUID PRIMARY KEY,
    nome VARCHAR(255) NOT NULL,
    estado VARCHAR(2) NOT NULL,
    plano_retencao_dias INTEGER CHECK (plano_retencao_dias IN (7, 15, 30)),
    created_at TIMESTAMP DEFAULT NOW()
);
CREATE TABLE cameras (
    id UUID PRIMARY KEY,
    cidade_id UUID REFERENCES cidades(id) ON DELETE CASCADE,
    nome VARCHAR(255) NOT NULL,
    url_rtsp VARCHAR(500) NOT NULL,
    localizacao VARCHAR(500),
    status VARCHAR(20) DEFAULT 'INATIVA',
    created_at TIMESTAMP DEFAULT NOW()
);
CREATE INDEX idx_cameras_cidade ON cameras(cidade_id);
CREATE TABLE streams (
    id UUID PRIMARY KEY,
    camera_id UUID NOT NULL,
    source_url VARCHAR(500) NOT NULL,
    status VARCHAR(20) DEFAULT 'STOPPED',
    started_at TIMESTAMP,
    stopped_at TIMESTAMP
);
CREATE TABLE recordings (
    id UUID PRIMARY KEY,
    stream_id UUID NOT NULL,
    retention_days INTEGER NOT NULL,
    status VARCHAR(20) DEFAULT 'RECORDING',
    started_at TIMESTAMP DEFAULT NOW(),
    stopped_at TIMESTAMP,
    storage_path VARCHAR(500),
    file_size_mb DECIMAL(10,2) DEFAULT 0,
    duration_seconds INTEGER DEFAULT 0
);
CREATE INDEX idx_recordings_stream ON recordings(stream_id);
CREATE INDEX idx_recordings_stopped_at ON recordings(stopped_at);
CREATE TABLE clips (
    id UUID PRIMARY KEY,
    recording_id UUID NOT NULL,
    start_time TIMESTAMP NOT NULL,
    end_time TIMESTAMP NOT NULL,
    status VARCHAR(20) DEFAULT 'PENDING',
    storage_path VARCHAR(500),
    file_size_mb DECIMAL(10,2) DEFAULT 0,
    created_at TIMESTAMP DEFAULT NOW()
);
CREATE INDEX idx_clips_recording ON clips(recording_id);
CREATE TABLE mosaics (
    id UUID PRIMARY KEY,
    user_id UUID NOT NULL,
    name VARCHAR(100) NOT NULL,
    layout VARCHAR(20) DEFAULT '2x2',
    camera_ids JSONB
);
CREATE INDEX idx_mosaics_user ON mosaics(user_id);
CREATE TABLE lpr_events (
    id UUID PRIMARY KEY,
    camera_id UUID NOT NULL,
    plate VARCHAR(8) NOT NULL,
    confidence DECIMAL(3,2) NOT NULL,
    image_url VARCHAR(500),
    detected_at TIMESTAMP DEFAULT NOW(),
    city_id UUID
);
CREATE INDEX idx_lpr_plate ON lpr_events(plate);
CREATE INDEX idx_lpr_camera ON lpr_events(camera_id);
CREATE INDEX idx_lpr_city ON lpr_events(city_id);
CREATE INDEX idx_lpr_detected_at ON lpr_events(detected_at);
"""

# Extensions the design needs: the agents that own cameras, and the segments they upload.
EXTENSIONS = """
CREATE TABLE agents (
    id UUID PRIMARY KEY,
    cidade_id UUID NOT NULL REFERENCES cidades(id) ON DELETE CASCADE,
    nome VARCHAR(255) NOT NULL,
    token_sha256 CHAR(64) UNIQUE NOT NULL,
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    last_seen_at TIMESTAMPTZ
);
CREATE INDEX idx_agents_cidade ON agents(cidade_id);
ALTER TABLE cameras ADD COLUMN agent_id UUID REFERENCES agents(id) ON DELETE SET NULL;
CREATE INDEX idx_cameras_agent ON cameras(agent_id);
CREATE TABLE segments (
    id UUID PRIMARY KEY,
    camera_id UUID NOT NULL REFERENCES cameras(id) ON DELETE CASCADE,
    agent_id UUID NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    start_time TIMESTAMPTZ NOT NULL,
    end_time TIMESTAMPTZ NOT NULL,
    duration_ms INTEGER NOT NULL CHECK (duration_ms > 0),
    codec VARCHAR(8) NOT NULL,
    bucket VARCHAR(63) NOT NULL,
    object_key VARCHAR(512) NOT NULL UNIQUE,
    size_bytes BIGINT NOT NULL CHECK (size_bytes > 0),
    sha256 CHAR(64) NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    CHECK (end_time > start_time)
);
CREATE INDEX idx_segments_camera_start ON segments(camera_id, start_time);
"""


def _run(script: str) -> None:
    # asyncpg prepares each statement: one command per call.
    for statement in script.split(";"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _run(SEED)
    _run(EXTENSIONS)


def downgrade() -> None:
    _run(
        "DROP TABLE segments; ALTER TABLE cameras DROP COLUMN agent_id; DROP TABLE agents;"
        "DROP TABLE lpr_events, mosaics, clips, recordings, streams, cameras, cidades,"
        " user_roles, roles, users;"
    )
