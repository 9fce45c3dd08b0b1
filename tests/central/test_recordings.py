"""Streams and recordings kept from ingested segments (central/recordings.py), against real
PostgreSQL, and through the real ingest (RabbitMQ, S3) for redelivery."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import pytest
from minio import Minio

from central import recordings, segments
from central.broker import BrokerAdmin
from shared.messages import BlobRef, SegmentRecorded, encode
from shared.topology import routing_key
from tests.central.test_api_scoping import PASSWORD, world
from tests.central.test_ingest import make_city, publish_many, upload_segment, wait_for_count
from tests.central_fixtures import CentralProcess

pytestmark = pytest.mark.timeout(90)


def seg(camera: uuid.UUID, agent: uuid.UUID, run: uuid.UUID, start_ms: int) -> SegmentRecorded:
    """A 2 s segment message (its object is never read: nothing here verifies blobs)."""
    segment_id = uuid.uuid4()
    return SegmentRecorded(
        segment_id=segment_id, agent_id=agent, camera_id=camera, start_ms=start_ms,
        duration_ms=2000, codec="h264", run_id=run,
        blob=BlobRef(bucket="recordings", key=f"x/{camera}/{segment_id}.mp4",
                     size_bytes=1024 * 1024, sha256="0" * 64),
    )  # fmt: skip


async def store(pool: asyncpg.Pool, messages: list[SegmentRecorded]) -> int:
    """As the segment consumer does: the segments and their recording in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        await segments.insert_segments(conn, messages)
        return await recordings.record_segments(conn, [m.segment_id for m in messages])


async def recording_rows(pool: asyncpg.Pool, camera: uuid.UUID) -> dict[uuid.UUID, Any]:
    async with pool.acquire() as conn:
        return {r["id"]: r for r in await recordings.list_recordings(conn, camera)}


async def test_a_recording_per_run_counted_once(db_pool: asyncpg.Pool) -> None:
    w = await world(db_pool)
    async with db_pool.acquire() as conn:
        agent = await conn.fetchval("SELECT agent_id FROM cameras WHERE id = $1", w["cam_a"])
    now_ms = int(time.time() * 1000)
    old_run, new_run = uuid.uuid4(), uuid.uuid4()
    first = [seg(w["cam_a"], agent, old_run, now_ms - 60_000 + i * 2000) for i in range(3)]
    second = [seg(w["cam_a"], agent, new_run, now_ms - 10_000 + i * 2000) for i in range(2)]
    assert await store(db_pool, first) == 3
    assert await store(db_pool, second) == 2

    rows = await recording_rows(db_pool, w["cam_a"])
    assert set(rows) == {old_run, new_run}
    old, new = rows[old_run], rows[new_run]
    assert (old["segments"], old["duration_ms"], old["duration_seconds"]) == (3, 6000, 6)
    assert old["size_bytes"] == 3 * 1024 * 1024 and float(old["file_size_mb"]) == 3.0
    assert old["retention_days"] == 15  # city A's plan
    assert old["status"] == "STOPPED" and old["stopped_at"] is not None  # a newer run exists
    assert new["status"] == "RECORDING" and new["stopped_at"] is None
    assert old["started_at"] == segments.ms_to_dt(first[0].start_ms).replace(tzinfo=None)
    assert old["storage_path"] == f"recordings/{w['a']}/{w['cam_a']}/"

    # Redelivered, repeated or late-counted segments change nothing.
    before = await recording_rows(db_pool, w["cam_a"])
    assert await store(db_pool, first + second) == 0
    async with db_pool.acquire() as conn:
        assert await recordings.record_segments(conn, [m.segment_id for m in first]) == 0
    assert await recording_rows(db_pool, w["cam_a"]) == before

    # A late segment of the older run (an agent's backlog) extends it and keeps it STOPPED.
    late = seg(w["cam_a"], agent, old_run, first[-1].start_ms + 2000)
    assert await store(db_pool, [late]) == 1
    rows = await recording_rows(db_pool, w["cam_a"])
    assert rows[old_run]["segments"] == 4 and rows[old_run]["status"] == "STOPPED"
    assert rows[new_run]["status"] == "RECORDING"

    async with db_pool.acquire() as conn:
        streams = await recordings.list_streams(conn, w["cam_a"])
    assert len(streams) == 1 and streams[0]["status"] == "RECORDING"
    assert streams[0]["source_url"] == "rtsp://10.0.0.1/a"
    assert {r["stream_id"] for r in rows.values()} == {streams[0]["id"]}


async def test_quiet_runs_stop(db_pool: asyncpg.Pool) -> None:
    w = await world(db_pool)
    async with db_pool.acquire() as conn:
        agent = await conn.fetchval("SELECT agent_id FROM cameras WHERE id = $1", w["cam_b"])
    run = uuid.uuid4()
    now_ms = int(time.time() * 1000)
    await store(db_pool, [seg(w["cam_b"], agent, run, now_ms - 5000)])
    assert (await recording_rows(db_pool, w["cam_b"]))[run]["status"] == "RECORDING"
    assert (await recording_rows(db_pool, w["cam_b"]))[run]["retention_days"] == 30
    async with db_pool.acquire() as conn:
        assert await recordings.stop_idle(conn, idle_s=1) == 1
        assert await recordings.stop_idle(conn, idle_s=1) == 0  # idempotent
        streams = await recordings.list_streams(conn, w["cam_b"])
    row = (await recording_rows(db_pool, w["cam_b"]))[run]
    assert row["status"] == "STOPPED" and row["stopped_at"] is not None
    assert streams[0]["status"] == "STOPPED"
    # A run older than the newest arriving late (a backlog) is never shown as recording.
    stale = uuid.uuid4()
    await store(db_pool, [seg(w["cam_b"], agent, stale, now_ms - 3_600_000)])
    assert (await recording_rows(db_pool, w["cam_b"]))[stale]["status"] == "STOPPED"


async def test_ingest_counts_a_redelivered_segment_once(
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    amqp_url: str,
    broker_admin: BrokerAdmin,
) -> None:
    site = await make_city(db_pool, broker_admin, "Piracicaba")
    run = uuid.uuid4()
    msg = upload_segment(s3_client, site, b"\x00\x00\x00\x18ftypmp42" * 100).model_copy(
        update={"run_id": run}
    )
    key = routing_key("segment", site["city"], site["agent"])
    await publish_many(amqp_url, site, [(key, encode(msg))] * 3)  # delivered three times
    assert await wait_for_count(db_pool, 1) == 1
    await asyncio.sleep(1.0)  # give a duplicate time to (wrongly) count
    rows = await recording_rows(db_pool, site["camera"])
    assert rows[run]["segments"] == 1 and rows[run]["duration_ms"] == 2000
    async with db_pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT recording_id FROM segments WHERE id = $1", msg.segment_id)
            == run
        )


async def test_recordings_and_streams_through_the_api(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    w = await world(db_pool)
    async with db_pool.acquire() as conn:
        agent = await conn.fetchval("SELECT agent_id FROM cameras WHERE id = $1", w["cam_a"])
    now_ms = int(time.time() * 1000)
    runs = [uuid.uuid4(), uuid.uuid4()]
    for n, run in enumerate(runs):
        await store(db_pool, [seg(w["cam_a"], agent, run, now_ms - 60_000 + n * 30_000)])
    op = await central_api.login("operador@a.example", PASSWORD)
    listed = await central_api.http.get(f"/api/cameras/{w['cam_a']}/recordings", headers=op)
    assert listed.status_code == 200, listed.text
    assert [r["id"] for r in listed.json()] == [str(runs[1]), str(runs[0])], "newest first"
    assert [r["status"] for r in listed.json()] == ["RECORDING", "STOPPED"]
    streams = await central_api.http.get(f"/api/cameras/{w['cam_a']}/streams", headers=op)
    assert [s["source_url"] for s in streams.json()] == ["rtsp://10.0.0.1/a"]
