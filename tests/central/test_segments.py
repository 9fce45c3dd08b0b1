"""Coverage and gaps from segment rows (pure), and the timeline endpoint on real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from central import agents, cameras, cities, segments, users
from shared.messages import BlobRef, SegmentRecorded
from tests.central_fixtures import CentralProcess

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def seg(start_s: float, end_s: float) -> dict[str, Any]:
    return {
        "start_time": T0 + timedelta(seconds=start_s),
        "end_time": T0 + timedelta(seconds=end_s),
    }


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_coverage_merges_abutting_segments_and_names_gaps() -> None:
    rows = [seg(0, 10), seg(10.2, 20), seg(20, 30), seg(45, 50), seg(50, 60)]
    covered, gaps = segments.coverage(rows, at(-5), at(70))
    assert covered == [(at(0), at(30)), (at(45), at(60))]
    assert gaps == [(at(-5), at(0)), (at(30), at(45)), (at(60), at(70))]


def test_coverage_clips_to_the_window_and_handles_nothing() -> None:
    covered, gaps = segments.coverage([seg(0, 10)], at(5), at(8))
    assert covered == [(at(5), at(8))] and gaps == []
    covered, gaps = segments.coverage([], at(0), at(10))
    assert covered == [] and gaps == [(at(0), at(10))]


@pytest.mark.timeout(60)
async def test_timeline_endpoint(central_api: CentralProcess, db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        city = await cities.create_city(conn, "Assis", "SP", 7)
        agent, _ = await agents.create_agent(conn, city, "a")
        camera = await cameras.create_camera(conn, city, "c", "rtsp://10.0.0.9/x", agent)
        await users.ensure_admin(conn, "admin@example.com", "uma senha longa o bastante")
        start_ms = int(T0.timestamp() * 1000)
        msgs = [
            SegmentRecorded(
                segment_id=uuid.uuid4(), agent_id=agent, camera_id=camera,
                start_ms=start_ms + offset, duration_ms=10_000, codec="h264",
                blob=BlobRef(bucket="recordings", key=f"{city}/{camera}/{offset}.mp4",
                             size_bytes=1, sha256="a" * 64),
            )
            for offset in (0, 10_000, 40_000)
        ]  # fmt: skip
        await segments.insert_segments(conn, msgs)
    headers = await central_api.login("admin@example.com", "uma senha longa o bastante")
    params = {"start": at(0).isoformat(), "end": at(60).isoformat()}
    resp = await central_api.http.get(
        f"/api/cameras/{camera}/timeline", params=params, headers=headers
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["segments"] == 3 and not body["truncated"]
    assert [(g["start"][:19], g["end"][:19]) for g in body["gaps"]] == [
        ("2026-03-01T12:00:20", "2026-03-01T12:00:40"),
        ("2026-03-01T12:00:50", "2026-03-01T12:01:00"),
    ]
    bad = await central_api.http.get(
        f"/api/cameras/{camera}/timeline",
        params={"start": at(10).isoformat(), "end": at(0).isoformat()},
        headers=headers,
    )
    assert bad.status_code == 422 and "end" in bad.text
