"""The first slice end to end, through real services only: RTSP camera -> agent (ffmpeg
segments, SQLite outbox, relay) -> RabbitMQ -> central ingest -> PostgreSQL + S3 -> HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import yaml
from minio import Minio

from agent.clock import read_clock_state
from agent.config import AgentConfig, load_config
from agent.enroll import enroll
from agent.service import run_agent
from agent.store import Store
from central.bootstrap import bootstrap
from shared.messages import LossEvent, PlateRead
from tests.central_fixtures import CentralProcess

ADMIN = ("admin@example.com", "correct horse battery staple")


@dataclass
class RunningAgent:
    config: AgentConfig
    ids: dict[str, Any]
    headers: dict[str, str]
    task: asyncio.Task[None]

    async def central_segments(self, central: CentralProcess) -> list[dict[str, Any]]:
        resp = await central.http.get(
            f"/api/cameras/{self.ids['camera_id']}/segments",
            params={"limit": 1000},
            headers=self.headers,
        )
        assert resp.status_code == 200, resp.text
        segments: list[dict[str, Any]] = resp.json()
        return segments

    def local_segments(self) -> set[str]:
        """Segment ids the agent registered (read-only peek at its SQLite store)."""
        import sqlite3

        conn = sqlite3.connect(self.config.data_dir / "agent.sqlite3")
        try:
            return {r[0] for r in conn.execute("SELECT segment_id FROM segments")}
        finally:
            conn.close()

    def local_unsent_kind(self, kind: str) -> int:
        import sqlite3

        conn = sqlite3.connect(self.config.data_dir / "agent.sqlite3")
        try:
            n: int = conn.execute(
                "SELECT count(*) FROM outbox WHERE sent_ms IS NULL AND kind = ?", [kind]
            ).fetchone()[0]
            return n
        finally:
            conn.close()

    def local_unsent(self) -> int:
        import sqlite3

        conn = sqlite3.connect(self.config.data_dir / "agent.sqlite3")
        try:
            n: int = conn.execute("SELECT count(*) FROM outbox WHERE sent_ms IS NULL").fetchone()[0]
            return n
        finally:
            conn.close()


@pytest.fixture
async def agent(
    central_api: CentralProcess,
    central_ingest: asyncio.Event,
    camera: Any,
    tmp_path: Path,
) -> AsyncIterator[RunningAgent]:
    """The demo city and camera in central, and an agent enrolled as an installer would
    (one-time token -> its own broker user), recording the test camera in 2 s segments."""
    ids = await bootstrap(
        central_api.settings.database_url.get_secret_value(),
        admin_email=ADMIN[0],
        admin_password=ADMIN[1],
        camera_url=camera.url,
        enrolment_token=True,
    )
    config_path = tmp_path / "agent.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "agent"),
                "cameras": {
                    "cam1": {
                        "id": str(ids["camera_id"]),
                        "name": "test",
                        "url": camera.url,
                        "record": {"segment_seconds": 2},
                    }
                },
            }
        )
    )
    await asyncio.to_thread(enroll, central_api.url, ids["enrolment_token"], config_path)
    config = load_config(config_path)
    assert config.central.amqp_url.get_secret_value().startswith("amqp://agent-")
    ids |= {"agent_id": str(config.agent_id), "city_id": str(config.city_id)}
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(config, stop))
    headers = await central_api.login(*ADMIN)
    try:
        yield RunningAgent(config, ids, headers, task)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


async def wait_for_segments(
    agent: RunningAgent, central: CentralProcess, n: int, timeout_s: float
) -> list[dict[str, Any]]:
    segments: list[dict[str, Any]] = []
    for _ in range(int(timeout_s * 2)):
        segments = await agent.central_segments(central)
        if len(segments) >= n or agent.task.done():
            break
        await asyncio.sleep(0.5)
    if agent.task.done():
        agent.task.result()  # surface the agent's crash
    return segments


@pytest.mark.timeout(180)
async def test_camera_video_reaches_central(
    central_api: CentralProcess, agent: RunningAgent, s3_client: Minio
) -> None:
    segments = await wait_for_segments(agent, central_api, 3, timeout_s=60)
    assert len(segments) >= 3, f"only {len(segments)} segment(s) reached central"
    ids = agent.ids
    for seg in segments:
        data = s3_client.get_object(seg["bucket"], seg["object_key"]).read()
        assert len(data) == seg["size_bytes"]
        assert hashlib.sha256(data).hexdigest() == seg["sha256"]
        assert seg["object_key"].startswith(f"{ids['city_id']}/{ids['camera_id']}/")
        assert seg["codec"] == "h264"
        assert 1000 <= seg["duration_ms"] <= 10_000, seg
        # Run and clock quality travel with each segment (the kernel's view of this clock).
        assert seg["run_id"] and seg["time_source"] == "live" and seg["shifted_ms"] == 0, seg
        assert seg["clock_sync"] == read_clock_state().sync and seg["clock_error_ms"] >= 0, seg
    starts = [datetime.fromisoformat(s["start_time"]) for s in segments]
    ends = [datetime.fromisoformat(s["end_time"]) for s in segments]
    assert starts == sorted(starts)
    for end, next_start in itertools.pairwise(zip(ends, starts, strict=True)):
        # Consecutive segments of one run abut: no overlap beyond rounding, no invented gap.
        gap = (next_start[1] - end[0]).total_seconds()
        assert abs(gap) < 0.2, (end, next_start)
    assert {s["id"] for s in segments} <= agent.local_segments()

    # A thumbnail of the camera's view reached the mosaic endpoint, as a real JPEG.
    thumb_url = f"/api/cameras/{ids['camera_id']}/thumbnail"
    for _ in range(60):
        resp = await central_api.http.get(thumb_url, headers=agent.headers)
        if resp.status_code == 200:
            break
        await asyncio.sleep(0.5)
    assert resp.status_code == 200, resp.text
    async with httpx.AsyncClient() as plain:
        jpeg = (await plain.get(resp.json()["url"])).content
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] == 320

    # The agent's heartbeats made it show as online, with its backlog.
    for _ in range(40):
        resp = await central_api.http.get("/api/agents", headers=agent.headers)
        health = {a["id"]: a for a in resp.json()}[ids["agent_id"]]
        if health["online"]:
            break
        await asyncio.sleep(0.5)
    assert health["online"] and health["agent_version"], health
    # Its heartbeat carries the clock's state, the disk budget and each camera's recorder,
    # which sets the camera's status at central.
    assert health["clock_sync"] == read_clock_state().sync and health["clock_offset_ms"] is not None
    for _ in range(40):
        resp = await central_api.http.get(f"/api/cameras/{ids['camera_id']}", headers=agent.headers)
        if resp.json()["status"] == "online":
            break
        await asyncio.sleep(0.5)
    assert resp.json()["status"] == "online" and resp.json()["status_at"], resp.json()
    resp = await central_api.http.get("/api/agents", headers=agent.headers)
    health = {a["id"]: a for a in resp.json()}[ids["agent_id"]]
    assert [c["camera_id"] for c in health["cameras"]] == [str(ids["camera_id"])], health
    assert health["disk"] is None or health["disk"]["used_bytes"] >= 0, health


@pytest.mark.timeout(240)
async def test_broker_outage_loses_and_duplicates_nothing(
    central_api: CentralProcess, agent: RunningAgent, rabbitmq: Any
) -> None:
    assert len(await wait_for_segments(agent, central_api, 1, timeout_s=60)) >= 1
    await asyncio.to_thread(rabbitmq.stop)
    try:
        await asyncio.sleep(6)  # the agent keeps recording into its outbox meanwhile
        assert agent.local_unsent() >= 1, "nothing was buffered while the broker was down"
    finally:
        await asyncio.to_thread(rabbitmq.start)
    recorded = agent.local_segments()
    segments = await wait_for_segments(agent, central_api, len(recorded), timeout_s=120)
    received = {s["id"] for s in segments}
    # Redelivery is absorbed by the segment id; a file registered twice would show as a second
    # segment with the same start. (Equal bytes are legitimate: the test scene loops.)
    assert len({s["start_time"] for s in segments}) == len(segments), "same start synced twice"
    missing = recorded - received
    assert not missing, f"{len(missing)} of {len(recorded)} recorded segments never arrived"


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


@pytest.mark.timeout(180)
async def test_plate_reads_reach_central_once_each(
    central_api: CentralProcess, agent: RunningAgent, db_pool: Any
) -> None:
    # The agent's LPR writes reads into its store; here the test plays that part (a second
    # connection to the agent's SQLite file, as a separate LPR process would be).
    store = Store(agent.config.data_dir / "agent.sqlite3")
    await store.open()
    camera_id = uuid.UUID(str(agent.ids["camera_id"]))
    reads = [
        PlateRead(
            read_id=uuid.uuid4(), agent_id=agent.config.agent_id, camera_id=camera_id,
            plate=f"BRA{n % 10}E{n % 100:02d}", confidence=0.91, seen_ms=1_700_000_000_000 + n,
        )
        for n in range(2000)
    ]  # fmt: skip
    try:
        assert await store.add_plate_reads(reads) == len(reads)
    finally:
        await store.close()
    count = 0
    for _ in range(120):
        async with db_pool.acquire() as conn:
            count = await conn.fetchval(
                "SELECT count(*) FROM lpr_events WHERE camera_id = $1", camera_id
            )
        if count >= len(reads):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1)
    async with db_pool.acquire() as conn:
        count = await conn.fetchval(
            "SELECT count(*) FROM lpr_events WHERE camera_id = $1", camera_id
        )
    assert count == len(reads)
    assert agent.local_unsent_kind("plate_read") == 0


@pytest.mark.timeout(180)
async def test_loss_event_reaches_central(
    central_api: CentralProcess, agent: RunningAgent, db_pool: Any
) -> None:
    # Eviction and recovery write loss events in their own transactions (tests/agent); here
    # the test writes one the same way, through a second connection, to see the relay send it
    # under the agent's own broker permissions and central store it.
    store = Store(agent.config.data_dir / "agent.sqlite3", agent.config.agent_id)
    await store.open()
    loss = LossEvent(
        loss_id=uuid.uuid4(), agent_id=agent.config.agent_id,
        camera_id=uuid.UUID(str(agent.ids["camera_id"])), start_ms=1_700_000_000_000,
        end_ms=1_700_000_004_000, segments=2, size_bytes=400_000, reason="disk_budget",
    )  # fmt: skip

    def insert() -> None:
        with store.db.atomic():
            store._insert_loss(loss, 1_700_000_010_000)

    try:
        await store._run(insert)
    finally:
        await store.close()
    reason = None
    for _ in range(120):
        async with db_pool.acquire() as conn:
            reason = await conn.fetchval(
                "SELECT reason FROM loss_events WHERE id = $1", loss.loss_id
            )
        if reason is not None:
            break
        await asyncio.sleep(0.5)
    assert reason == "disk_budget"
    assert agent.local_unsent_kind("loss_event") == 0
