"""Config hints reach the running agent over its command channel: a camera disabled at central
stops recording (no new segments) and records again when re-enabled, central's upload cap
reaches the relay, an older hint or one addressed to another agent changes nothing, and a
restarted agent applies the hint it holds before any camera starts."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest

from agent.cli import print_agent_status
from agent.service import Agent, read_status, status_path
from central import config_hints
from central.clipworker import CommandPublisher
from shared.messages import CameraHint, ConfigHint, encode
from shared.topology import agent_command_queue
from tests.central.test_clips_on_demand import until
from tests.central_fixtures import CentralProcess
from tests.test_end_to_end import RunningAgent, agent  # noqa: F401  (the agent fixture)

SEGMENT_S = 2  # the agent fixture's segment length


def cam1(data_dir: Path) -> dict[str, Any]:
    """The camera's entry in the agent's status file."""
    status = read_status(data_dir) or {}
    found = [c for c in status.get("cameras", []) if c["key"] == "cam1"]
    return found[0] if found else {}


async def publish_raw(amqp_url: str, queue_of: uuid.UUID, hint: ConfigHint) -> None:
    """Put ``hint`` on ``queue_of``'s command queue, whoever it is addressed to."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(encode(hint), type=hint.type, message_id=str(hint.hint_id)),
            routing_key=agent_command_queue(queue_of),
        )
    finally:
        await connection.close()


async def no_new_segments(running: RunningAgent) -> None:
    """After a recorder stopped (its last segment may still close): none for three lengths."""
    await asyncio.sleep(SEGMENT_S)
    before = running.local_segments()
    await asyncio.sleep(3 * SEGMENT_S)
    assert running.local_segments() == before, "a camera disabled at central still records"


@pytest.mark.timeout(300)
async def test_config_hints_drive_the_running_agent(
    central_api: CentralProcess,
    agent: RunningAgent,  # noqa: F811
    db_pool: asyncpg.Pool,
    amqp_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    http, headers, data_dir = central_api.http, agent.headers, agent.config.data_dir
    agent_id = uuid.UUID(str(agent.ids["agent_id"]))
    camera = f"/api/cameras/{agent.ids['camera_id']}"

    def held() -> dict[str, Any]:
        return (read_status(data_dir) or {}).get("central_hint") or {}

    async def push_and_hold(version: int) -> None:
        assert await config_hints.push_due(db_pool, publisher) == 1
        await until(lambda: _ready(held().get("version") == version), 30, f"hint v{version}")

    publisher = CommandPublisher(amqp_url)
    try:
        await until(lambda: _ready(len(agent.local_segments()) >= 1), 60, "a first segment")
        # A newly enrolled agent gets a first hint: central disables nothing.
        await push_and_hold(0)
        assert held() == {"version": 0, "max_upload_mbps": None, "cameras_disabled": []}
        assert await config_hints.push_due(db_pool, publisher) == 0, "sent once per version"

        off = await http.patch(camera, json={"enabled": False}, headers=headers)
        assert off.status_code == 200, off.text
        await push_and_hold(1)
        await until(lambda: _ready(cam1(data_dir).get("status") == "disabled"), 30, "stopped")
        entry = cam1(data_dir)
        assert entry["disabled_by_central"] and "disabled at central" in entry["reason"], entry
        assert held()["cameras_disabled"] == ["cam1"]
        await no_new_segments(agent)
        # Its heartbeat tells central the camera is disabled.
        await until(_camera_status(central_api, camera, headers, "disabled"), 40, "reported")

        # An older hint enabling it, and a newer one addressed to another agent (on this
        # agent's queue), change nothing; the next real hint, queued behind them, applies.
        stale = ConfigHint(
            hint_id=config_hints.hint_id(agent_id, 0), agent_id=agent_id, version=0,
            cameras=[CameraHint(camera_id=uuid.UUID(str(agent.ids["camera_id"])), enabled=True)],
        )  # fmt: skip
        await publisher.publish(stale)
        other = uuid.uuid4()
        foreign = ConfigHint(
            hint_id=config_hints.hint_id(other, 10**6), agent_id=other, version=10**6,
            max_upload_mbps=1,
        )  # fmt: skip
        await publish_raw(amqp_url, agent_id, foreign)
        capped = await http.patch(
            f"/api/agents/{agent_id}", json={"max_upload_mbps": 2.5}, headers=headers
        )
        assert capped.status_code == 200, capped.text
        await push_and_hold(2)
        assert held()["max_upload_mbps"] == 2.5 and held()["cameras_disabled"] == ["cam1"]
        relay = (read_status(data_dir) or {})["relay"]
        assert relay["upload_cap_mbps"] == 2.5, "central's cap reached the relay"
        assert cam1(data_dir)["status"] == "disabled"
        await no_new_segments(agent)

        capsys.readouterr()
        print_agent_status(read_status(data_dir), status_path(data_dir))
        shown = capsys.readouterr().out
        assert "central config hint: version 2, upload cap 2.5 Mbps" in shown, shown
        assert "cameras disabled at central: cam1" in shown, shown

        on = await http.patch(camera, json={"enabled": True}, headers=headers)
        assert on.status_code == 200, on.text
        before = agent.local_segments()
        await push_and_hold(3)
        await until(lambda: _ready(agent.local_segments() > before), 60, "recording again")
        assert not cam1(data_dir)["disabled_by_central"]
        assert (read_status(data_dir) or {})["relay"]["upload_cap_mbps"] == 2.5
        assert not agent.task.done(), "the agent keeps running"
    finally:
        await publisher.close()


@pytest.mark.timeout(240)
async def test_a_restarted_agent_keeps_the_held_hint(
    central_api: CentralProcess,
    agent: RunningAgent,  # noqa: F811
    db_pool: asyncpg.Pool,
    amqp_url: str,
) -> None:
    agent_id = uuid.UUID(str(agent.ids["agent_id"]))
    data_dir = agent.config.data_dir
    await until(lambda: _ready(len(agent.local_segments()) >= 1), 60, "a first segment")
    off = await central_api.http.patch(
        f"/api/cameras/{agent.ids['camera_id']}", json={"enabled": False}, headers=agent.headers
    )
    assert off.status_code == 200
    capped = await central_api.http.patch(
        f"/api/agents/{agent_id}", json={"max_upload_mbps": 4}, headers=agent.headers
    )
    assert capped.status_code == 200
    publisher = CommandPublisher(amqp_url)
    try:
        assert await config_hints.push_due(db_pool, publisher) == 1
    finally:
        await publisher.close()
    await until(lambda: _ready(cam1(data_dir).get("status") == "disabled"), 30, "stopped")

    agent.task.cancel()  # the fixture's agent stops (its store closes) ...
    with contextlib.suppress(asyncio.CancelledError):
        await agent.task
    restarted = Agent(agent.config)  # ... and runs again on the same data directory
    stop = asyncio.Event()
    task = asyncio.create_task(restarted.run(stop))
    try:
        await until(lambda: _ready(restarted.state == "running"), 30, "the restarted agent")
        # (Start-up recovery may have registered the file the stop interrupted.)
        before = agent.local_segments()
        assert restarted.recorder_tasks() == {}, "the disabled camera never started"
        assert restarted.hint is not None and restarted.hint.version == 2
        assert restarted.relay.upload_cap == 4 * 125_000
        assert restarted.status()["cameras"][0]["disabled_by_central"]
        await asyncio.sleep(3 * SEGMENT_S)
        assert restarted.recorder_tasks() == {} and agent.local_segments() == before
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _ready(value: bool) -> bool:
    return value


def _camera_status(central: CentralProcess, url: str, headers: dict[str, str], want: str) -> Any:
    async def check() -> bool:
        resp = await central.http.get(url, headers=headers)
        return bool(resp.json().get("status") == want)

    return check
