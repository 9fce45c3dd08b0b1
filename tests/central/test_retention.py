"""The retention sweeper on real PostgreSQL and S3: each city's plan, rows and objects together,
idempotent, resumable after a half-done batch, and harmless when storage is down."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from minio import Minio

from central import retention, storage
from devstack.procs import free_port
from tests.central.test_api_scoping import world

pytestmark = pytest.mark.timeout(120)
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def put(s3: Minio, bucket: str, key: str) -> None:
    s3.put_object(bucket, key, io.BytesIO(b"x" * 10), 10)


def exists(s3: Minio, bucket: str, key: str) -> bool:
    return any(o.object_name == key for o in s3.list_objects(bucket, prefix=key))


async def add_segment(
    conn: asyncpg.Connection, s3: Minio, camera: uuid.UUID, age: timedelta
) -> str:
    seg_id = uuid.uuid4()
    key = f"retention-test/{camera}/{seg_id}.mp4"
    put(s3, "recordings", key)
    start = NOW - age
    await conn.execute(
        "INSERT INTO segments (id, camera_id, agent_id, start_time, end_time, duration_ms, codec,"
        " bucket, object_key, size_bytes, sha256)"
        " SELECT $1, id, agent_id, $2, $3, 10000, 'h264', 'recordings', $4, 10, $5"
        " FROM cameras WHERE id = $6",
        seg_id, start, start + timedelta(seconds=10), key, "0" * 64, camera,
    )  # fmt: skip
    return key


async def add_read(
    conn: asyncpg.Connection, s3: Minio, camera: uuid.UUID, city: uuid.UUID, age: timedelta
) -> str:
    key = f"retention-test/{uuid.uuid4()}.jpg"
    put(s3, "lpr-images", key)
    await conn.execute(
        "INSERT INTO lpr_events (id, camera_id, plate, confidence, image_url, detected_at, city_id)"
        " VALUES ($1, $2, 'BRA2E19', 0.9, $3, $4, $5)",
        uuid.uuid4(), camera, f"lpr-images/{key}", (NOW - age).replace(tzinfo=None), city,
    )  # fmt: skip
    return key


async def counts(conn: asyncpg.Connection) -> dict[str, Any]:
    return {
        t: await conn.fetchval(f"SELECT count(*) FROM {t}")  # noqa: S608 - fixed names
        for t in ("segments", "lpr_events", "loss_events", "alerts")
    }


async def test_each_city_keeps_its_plan_rows_and_objects_together(
    db_pool: asyncpg.Pool, s3_client: Minio
) -> None:
    w = await world(db_pool)  # city A keeps 15 days, city B 30
    old, recent = timedelta(days=20), timedelta(days=1)
    async with db_pool.acquire() as conn:
        gone_a = await add_segment(conn, s3_client, w["cam_a"], old)
        put(s3_client, "recordings", storage.hls_key(gone_a))  # it was played over HLS once
        kept_a = await add_segment(conn, s3_client, w["cam_a"], recent)
        kept_b = await add_segment(conn, s3_client, w["cam_b"], old)
        crop_gone = await add_read(conn, s3_client, w["cam_a"], w["a"], old)
        crop_kept = await add_read(conn, s3_client, w["cam_a"], w["a"], recent)
        agent_a = await conn.fetchval("SELECT agent_id FROM cameras WHERE id = $1", w["cam_a"])
        await conn.execute(
            "INSERT INTO loss_events (id, agent_id, camera_id, cidade_id, start_time, end_time,"
            " segments, size_bytes, reason) VALUES ($1, $2, $3, $4, $5, $5, 1, 10, 'disk_budget')",
            uuid.uuid4(), agent_a, w["cam_a"], w["a"], NOW - old,
        )  # fmt: skip
        # A batch interrupted after its objects went: the row is still there, the object not.
        half_done = await add_segment(conn, s3_client, w["cam_a"], old + timedelta(hours=1))
        s3_client.remove_object("recordings", half_done)

        # Runs: one expired, one expired but a clip points at it, one within the plan.
        runs = {}
        for name, age in (("old", old), ("clipped", old), ("recent", recent)):
            runs[name] = uuid.uuid4()
            await conn.execute(
                "INSERT INTO recordings (id, stream_id, retention_days, camera_id, last_end)"
                " VALUES ($1, $2, 15, $3, $4)",
                runs[name], uuid.uuid4(), w["cam_a"], NOW - age,
            )  # fmt: skip
        await conn.execute(
            "INSERT INTO clips (id, recording_id, start_time, end_time, camera_id, status, keep)"
            " VALUES ($1, $2, $3, $3, $4, 'READY', TRUE)",
            uuid.uuid4(), runs["clipped"], (NOW - old).replace(tzinfo=None), w["cam_a"],
        )  # fmt: skip

    report = await retention.sweep(db_pool, s3_client, now=NOW)
    assert (report.segments, report.plate_reads, report.loss_events) == (2, 1, 1)
    assert report.recordings == 1
    assert report.cities == [w["a"]]
    assert not exists(s3_client, "recordings", gone_a)
    assert not exists(s3_client, "recordings", storage.hls_key(gone_a)), "its rendition too"
    assert not exists(s3_client, "lpr-images", crop_gone)
    for bucket, key in (("recordings", kept_a), ("recordings", kept_b), ("lpr-images", crop_kept)):
        assert exists(s3_client, bucket, key), f"{bucket}/{key} is within its city's plan"
    async with db_pool.acquire() as conn:
        assert await counts(conn) == {
            "segments": 2, "lpr_events": 1, "loss_events": 0, "alerts": 0
        }  # fmt: skip
        keys = {r["object_key"] for r in await conn.fetch("SELECT object_key FROM segments")}
    assert keys == {kept_a, kept_b}
    async with db_pool.acquire() as conn:
        left = {r["id"] for r in await conn.fetch("SELECT id FROM recordings")}
        assert left == {runs["clipped"], runs["recent"]}
        assert await conn.fetchval("SELECT count(*) FROM clips") == 1, "clips are never swept"

    again = await retention.sweep(db_pool, s3_client, now=NOW)
    assert again.rows == 0 and again.objects == 0, "a second pass finds nothing"


async def test_storage_down_keeps_every_row(db_pool: asyncpg.Pool, s3_client: Minio) -> None:
    w = await world(db_pool)
    async with db_pool.acquire() as conn:
        key = await add_segment(conn, s3_client, w["cam_a"], timedelta(days=40))
    dead = Minio(f"127.0.0.1:{free_port()}", access_key="x", secret_key="y", secure=False)
    with pytest.raises(retention.SweepError):
        await retention.sweep(db_pool, dead, now=NOW)
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM segments") == 1, "rows stay"
    assert exists(s3_client, "recordings", key)
    # Storage back: the next pass does the work.
    report = await retention.sweep(db_pool, s3_client, now=NOW)
    assert report.segments == 1 and not exists(s3_client, "recordings", key)
