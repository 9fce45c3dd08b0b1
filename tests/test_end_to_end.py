"""The first slice end to end, through real services only: RTSP camera -> agent (ffmpeg
segments, SQLite outbox, relay) -> RabbitMQ -> central ingest -> PostgreSQL + S3 -> HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from agent.config import AgentConfig
from agent.service import run_agent
from agent.store import Store
from central.bootstrap import bootstrap
from tests.central_fixtures import CentralProcess

ADMIN = ("admin@example.com", "correct horse battery staple")


@pytest.mark.timeout(180)
async def test_camera_video_reaches_central(
    central_api: CentralProcess,
    central_ingest: asyncio.Event,
    s3_client: Minio,
    camera: Any,
    amqp_url: str,
    tmp_path: Path,
) -> None:
    ids = await bootstrap(
        central_api.settings.database_url.get_secret_value(),
        admin_email=ADMIN[0],
        admin_password=ADMIN[1],
        camera_url=camera.url,
    )
    config = AgentConfig.model_validate(
        {
            "agent_id": ids["agent_id"],
            "city_id": ids["city_id"],
            "data_dir": str(tmp_path / "agent"),
            "central": {
                "api_url": central_api.url,
                "amqp_url": amqp_url,
                "token": ids["agent_token"],
            },
            "cameras": {
                "cam1": {
                    "id": ids["camera_id"],
                    "name": "test",
                    "url": camera.url,
                    "record": {"segment_seconds": 2},
                }
            },
        }
    )
    stop = asyncio.Event()
    agent = asyncio.create_task(run_agent(config, stop))
    headers = await central_api.login(*ADMIN)
    segments: list[dict[str, Any]] = []
    try:
        for _ in range(120):
            resp = await central_api.http.get(
                f"/api/cameras/{ids['camera_id']}/segments", headers=headers
            )
            assert resp.status_code == 200, resp.text
            segments = resp.json()
            if len(segments) >= 3 or agent.done():
                break
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(agent, 30)
    assert len(segments) >= 3, f"only {len(segments)} segment(s) reached central"

    for seg in segments:
        data = s3_client.get_object(seg["bucket"], seg["object_key"]).read()
        assert len(data) == seg["size_bytes"]
        assert hashlib.sha256(data).hexdigest() == seg["sha256"]
        assert seg["object_key"].startswith(f"{ids['city_id']}/{ids['camera_id']}/")
        assert seg["codec"] == "h264"
        assert 1000 <= seg["duration_ms"] <= 10_000, seg
    starts = [datetime.fromisoformat(s["start_time"]) for s in segments]
    ends = [datetime.fromisoformat(s["end_time"]) for s in segments]
    assert starts == sorted(starts)
    for end, next_start in zip(ends, starts[1:], strict=False):
        # Consecutive segments of one run abut: no overlap beyond rounding, no invented gap.
        assert abs((next_start - end).total_seconds()) < 0.2, (end, next_start)

    # The agent's outbox marked them sent; nothing central holds is pending locally.
    store = Store(config.data_dir / "agent.sqlite3")
    await store.open()
    try:
        backlog = await store.backlog()
    finally:
        await store.close()
    assert backlog["sent"] >= len(segments)


@pytest.mark.timeout(60)
async def test_segments_api_requires_login_and_knows_cameras(
    central_api: CentralProcess,
) -> None:
    await bootstrap(
        central_api.settings.database_url.get_secret_value(),
        admin_email=ADMIN[0],
        admin_password=ADMIN[1],
    )
    resp = await central_api.http.get(f"/api/cameras/{uuid.uuid4()}/segments")
    assert resp.status_code == 401
    headers = await central_api.login(*ADMIN)
    resp = await central_api.http.get(f"/api/cameras/{uuid.uuid4()}/segments", headers=headers)
    assert resp.status_code == 404
    bad = await central_api.http.post(
        "/api/auth/login", json={"email": ADMIN[0], "password": "wrong"}
    )
    assert bad.status_code == 401
    health = await central_api.http.get("/api/health")
    assert health.json() == {"database": "ok", "object_storage": "ok", "redis": "ok"}
