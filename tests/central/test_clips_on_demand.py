"""Upload on demand, end to end with a real agent: a clip of video that is still only on the
agent (its uploads are cut) makes central ask for it; the agent moves those segments ahead of
its backlog, and the clip completes once they arrive."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from minio import Minio

from agent.store import PRIORITY, Store
from central.clipworker import ClipWorker
from central.settings import Settings
from central.video import probe_duration_ms
from devstack.tcpproxy import TcpProxy
from shared.messages import UploadRequest, encode
from shared.topology import agent_command_queue
from tests.central.test_clips import fetch
from tests.central_fixtures import CentralProcess
from tests.test_end_to_end import RunningAgent, agent  # noqa: F401  (the agent fixture)

REQUESTED = Store.REQUESTED_SEGMENT_PRIORITY


@pytest.fixture
async def s3_link(s3: Any) -> AsyncIterator[TcpProxy]:
    """The agents' way to object storage, cut from the start: nothing they record uploads."""
    host, port = s3.endpoint.rsplit(":", 1)
    async with TcpProxy(host, int(port)) as proxy:
        await proxy.cut()
        yield proxy


@pytest.fixture
def central_settings(central_settings: Settings, s3_link: TcpProxy) -> Settings:
    """Central as usual, except that it signs agents' upload URLs for the cut link."""
    return central_settings.model_copy(update={"s3_public_endpoint": f"127.0.0.1:{s3_link.port}"})


def outbox(running: RunningAgent) -> list[dict[str, Any]]:
    """The agent's segment rows, oldest first, with their outbox state (read-only peek)."""
    conn = sqlite3.connect(running.config.data_dir / "agent.sqlite3")
    try:
        rows = conn.execute(
            "SELECT s.segment_id, s.start_ms, s.duration_ms, o.priority, o.sent_ms"
            " FROM segments s JOIN outbox o ON o.kind = 'segment' AND o.ref_id = s.segment_id"
            " ORDER BY s.start_ms"
        ).fetchall()
    finally:
        conn.close()
    keys = ("segment_id", "start_ms", "duration_ms", "priority", "sent_ms")
    return [dict(zip(keys, row, strict=True)) for row in rows]


async def until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


@pytest.mark.timeout(300)
async def test_clip_of_video_still_on_the_agent(
    central_api: CentralProcess,
    agent: RunningAgent,  # noqa: F811
    central_settings: Settings,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    s3_link: TcpProxy,
) -> None:
    # The agent records; with its uploads cut, every segment waits in its outbox.
    async def six_recorded() -> list[dict[str, Any]] | None:
        rows = outbox(agent)
        return rows if len(rows) >= 6 else None

    rows = await until(six_recorded, 120, "six segments recorded")
    assert all(r["sent_ms"] is None for r in rows)
    assert await agent.central_segments(central_api) == []
    wanted = rows[3:5]
    start_ms, end_ms = wanted[0]["start_ms"], wanted[-1]["start_ms"] + wanted[-1]["duration_ms"]
    resp = await central_api.http.post(
        f"/api/cameras/{agent.ids['camera_id']}/clips",
        json={"start": at(start_ms), "end": at(end_ms)},
        headers=agent.headers,
    )
    assert resp.status_code == 201, resp.text
    clip_url = f"/api/clips/{resp.json()['id']}"

    worker = ClipWorker(db_pool, s3_client, central_settings.amqp_url.get_secret_value(),
                        upload_wait_s=240, recheck_s=0.5)  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        # Central asks; the agent moves exactly the requested segments ahead of its backlog.
        async def moved_ahead() -> bool:
            return all(r["priority"] == REQUESTED for r in outbox(agent)[3:5])

        await until(moved_ahead, 60, "the requested segments to move ahead")
        others = [r for r in outbox(agent) if r["segment_id"] not in {w["segment_id"]
                                                                      for w in wanted}]  # fmt: skip
        assert {r["priority"] for r in others} == {PRIORITY["segment"]}
        clip = (await central_api.http.get(clip_url, headers=agent.headers)).json()
        assert clip["status"] == "PENDING" and "asked agent" in clip["reason"], clip
        assert worker.requests == 1

        # Uploads come back: the requested segments go first and the clip completes.
        await s3_link.restore()

        async def finished() -> dict[str, Any] | None:
            clip = (await central_api.http.get(clip_url, headers=agent.headers)).json()
            return clip if clip["status"] != "PENDING" else None

        clip = await until(finished, 180, "the clip to finish")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert clip["status"] == "READY", clip
    assert clip["gaps"] == [] and clip["segments"] == 2, clip
    await fetch(clip["download_url"], agent.config.data_dir / "clip.mp4")
    duration = await probe_duration_ms(agent.config.data_dir / "clip.mp4")
    assert abs(duration - (end_ms - start_ms)) <= 200, (duration, end_ms - start_ms)

    # The agent sent the requested segments before the older ones it had been holding.
    sent = {r["segment_id"]: r["sent_ms"] for r in outbox(agent)}
    last_wanted = max(sent[w["segment_id"]] for w in wanted)
    for older in rows[:3]:
        assert sent[older["segment_id"]] is None or sent[older["segment_id"]] >= last_wanted
    assert worker.requests == 1  # asked once, however often the worker checked


@pytest.mark.timeout(180)
async def test_commands_the_agent_cannot_apply_are_logged_and_acked(
    central_api: CentralProcess,
    agent: RunningAgent,  # noqa: F811
    central_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent_id = agent.config.agent_id
    old_ms = int(time.time() * 1000) - 3_600_000
    camera_id = uuid.UUID(str(agent.ids["camera_id"]))
    request = UploadRequest(
        request_id=uuid.uuid4(), agent_id=agent_id, camera_id=camera_id,
        start_ms=old_ms, end_ms=old_ms + 10_000, reason="nothing recorded then",
    )  # fmt: skip
    other = request.model_copy(update={"agent_id": uuid.uuid4(), "request_id": uuid.uuid4()})
    conn = await aio_pika.connect(central_settings.amqp_url.get_secret_value())
    async with conn:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        for body, kind in (
            (encode(request), "upload_request"),  # for segments the agent does not hold
            (encode(other), "upload_request"),  # addressed to another agent
            (b'{"type": "reboot"}', "reboot"),  # a type without a handler
            (b"{not json", "upload_request"),  # unparsable
        ):
            await channel.default_exchange.publish(
                aio_pika.Message(body, type=kind, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=agent_command_queue(agent_id),
                timeout=10,
            )

    async def all_said() -> bool:
        text = caplog.text
        return all(
            needle in text
            for needle in (
                f"upload request {request.request_id}: no unsent segment",
                "not this one: ignored",
                "of unknown type 'reboot': ignored",
                "refused: invalid upload_request",
            )
        )

    await until(all_said, 60, "the agent to log each command")
    mgmt = central_settings.rabbitmq_management_url
    assert mgmt is not None
    url = f"{mgmt.get_secret_value().rstrip('/')}/api/queues/%2F/{agent_command_queue(agent_id)}"

    async def drained() -> bool:
        async with httpx.AsyncClient() as http:
            stats = (await http.get(url)).json()
        return stats.get("messages") == 0 and stats.get("consumers") == 1

    await until(drained, 30, "the command queue to be empty")  # acked, not stuck or requeued
    assert not agent.task.done()
