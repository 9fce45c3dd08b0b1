"""Alembic migrations on a real PostgreSQL: the seed's schema as written, upgrade and downgrade."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest

from central import migrate

pytestmark = pytest.mark.timeout(120)

SEED_TABLES = {
    "users": {"id", "email", "password_hash", "is_active", "created_at"},
    "roles": {"id", "name", "permissions"},
    "user_roles": {"user_id", "role_id"},
    "cidades": {"id", "nome", "estado", "plano_retencao_dias", "created_at"},
    "cameras": {"id", "cidade_id", "nome", "url_rtsp", "localizacao", "status", "created_at"},
    "streams": {"id", "camera_id", "source_url", "status", "started_at", "stopped_at"},
    "recordings": {
        "id", "stream_id", "retention_days", "status", "started_at", "stopped_at",
        "storage_path", "file_size_mb", "duration_seconds",
    },
    "clips": {
        "id", "recording_id", "start_time", "end_time", "status", "storage_path",
        "file_size_mb", "created_at",
    },
    "mosaics": {"id", "user_id", "name", "layout", "camera_ids"},
    "lpr_events": {
        "id", "camera_id", "plate", "confidence", "image_url", "detected_at", "city_id",
    },
}  # fmt: skip
SEED_INDEXES = {
    "idx_cameras_cidade", "idx_recordings_stream", "idx_recordings_stopped_at",
    "idx_clips_recording", "idx_mosaics_user", "idx_lpr_plate", "idx_lpr_camera",
    "idx_lpr_city", "idx_lpr_detected_at",
}  # fmt: skip


async def columns(url: str) -> dict[str, set[str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["table_name"], set()).add(r["column_name"])
    return out


async def test_upgrade_creates_the_seed_schema_as_written(pg_db_url: str) -> None:
    await asyncio.to_thread(migrate.upgrade, pg_db_url)
    cols = await columns(pg_db_url)
    for table, expected in SEED_TABLES.items():
        assert expected <= cols.get(table, set()), f"{table}: missing {expected - cols[table]}"
    conn = await asyncpg.connect(pg_db_url)
    try:
        indexes = {r[0] for r in await conn.fetch("SELECT indexname FROM pg_indexes")}
        assert indexes >= SEED_INDEXES
        # The seed's CHECK: a retention plan is 7, 15 or 30 days.
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO cidades (id, nome, estado, plano_retencao_dias)"
                " VALUES (gen_random_uuid(), 'X', 'SP', 10)"
            )
    finally:
        await conn.close()


async def test_downgrade_to_base_and_upgrade_again(pg_db_url: str) -> None:
    await asyncio.to_thread(migrate.upgrade, pg_db_url)
    await asyncio.to_thread(migrate.upgrade, pg_db_url)  # idempotent
    await asyncio.to_thread(migrate.downgrade, pg_db_url, "base")
    assert set(await columns(pg_db_url)) <= {"alembic_version"}
    await asyncio.to_thread(migrate.upgrade, pg_db_url)
    assert "segments" in await columns(pg_db_url)


def test_cli_migrate_without_database_url_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    res = subprocess.run(
        [sys.executable, "-m", "central.cli", "migrate"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode != 0
    assert "DATABASE_URL is not set" in res.stderr


def test_cli_migrate_applies_to_database_url(pg_db_url: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "central.cli", "migrate"],
        env=dict(os.environ, DATABASE_URL=pg_db_url), capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "segments" in asyncio.run(columns(pg_db_url))
