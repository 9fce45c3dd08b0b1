"""Config hints at central: camera and agent edits bump the hint version of the agents they
concern, the hint lists what central decides (disabled or assigned elsewhere; cap), the agent
cap is edited within scope and audited, and the pusher sends each version once to the agent's
own command queue."""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
import asyncpg
import pytest

from central import agents, commands, config_hints, watchlists
from central.clipworker import CommandPublisher
from shared.messages import ConfigHint, decode
from shared.topology import agent_command_queue
from tests.central.test_api_scoping import PASSWORD, world
from tests.central_fixtures import CentralProcess

pytestmark = pytest.mark.timeout(120)


async def hint(pool: asyncpg.Pool, agent_id: uuid.UUID) -> tuple[int, dict[str, bool], Any]:
    """(version, {camera id: enabled}, cap) of the hint central would send the agent now."""
    async with pool.acquire() as conn:
        h = await config_hints.agent_hint(conn, agent_id)
    return h.version, {str(c.camera_id): c.enabled for c in h.cameras}, h.max_upload_mbps


async def test_camera_and_agent_edits_make_new_hints(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    w = await world(db_pool)
    async with db_pool.acquire() as conn:
        recorded_by = dict(await conn.fetch("SELECT id, agent_id FROM cameras"))
        agent_a, agent_b = recorded_by[w["cam_a"]], recorded_by[w["cam_b"]]
        agent_a2, _ = await agents.create_agent(conn, w["a"], "agente-a2")  # A's second agent
    inst = await central_api.login("instalador@a.example", PASSWORD)
    op = await central_api.login("operador@a.example", PASSWORD)
    http, cam_a, cam = central_api.http, str(w["cam_a"]), f"/api/cameras/{w['cam_a']}"

    # cam_a is agent A's: listed for both of the city's agents, enabled for its own only.
    assert await hint(db_pool, agent_a) == (0, {cam_a: True}, None)
    assert await hint(db_pool, agent_a2) == (0, {cam_a: False}, None)
    assert await hint(db_pool, agent_b) == (0, {str(w["cam_b"]): True}, None)

    off = await http.patch(cam, json={"enabled": False}, headers=inst)
    assert off.status_code == 200 and off.json()["enabled"] is False, off.text
    assert await hint(db_pool, agent_a) == (1, {cam_a: False}, None)
    assert await hint(db_pool, agent_a2) == (1, {cam_a: False}, None)
    assert (await hint(db_pool, agent_b))[0] == 0, "another city's agent is not concerned"
    assert (await http.patch(cam, json={"enabled": None}, headers=inst)).status_code == 422
    assert (await http.patch(cam, json={"nome": "renomeada"}, headers=inst)).status_code == 200
    assert (await hint(db_pool, agent_a))[0] == 1, "a name does not concern the agents"

    moved = await http.patch(
        cam, json={"enabled": True, "agent_id": str(agent_a2)}, headers=inst
    )  # fmt: skip
    assert moved.status_code == 200 and moved.json()["enabled"] is True, moved.text
    assert await hint(db_pool, agent_a) == (2, {cam_a: False}, None), "moved away: disabled"
    assert await hint(db_pool, agent_a2) == (2, {cam_a: True}, None)
    unassigned = await http.patch(cam, json={"agent_id": None}, headers=inst)
    assert unassigned.status_code == 200
    assert await hint(db_pool, agent_a) == (3, {}, None), "unassigned and enabled: the YAML's"

    # The upload cap: agents:admin, the caller's cities, validated, audited.
    url = f"/api/agents/{agent_a}"
    capped = await http.patch(url, json={"max_upload_mbps": 2.5}, headers=inst)
    assert capped.status_code == 200, capped.text
    assert capped.json()["max_upload_mbps"] == 2.5 and capped.json()["config_version"] == 4
    assert await hint(db_pool, agent_a) == (4, {}, 2.5)
    assert (await hint(db_pool, agent_a2))[0] == 3, "only that agent"
    for bad in ({}, {"max_upload_mbps": 0}, {"max_upload_mbps": -1}, {"max_upload_mbps": 1e6}):
        assert (await http.patch(url, json=bad, headers=inst)).status_code == 422, bad
    assert (await http.patch(url, json={"max_upload_mbps": 1}, headers=op)).status_code == 403
    for other in (agent_b, uuid.uuid4()):
        resp = await http.patch(f"/api/agents/{other}", json={"max_upload_mbps": 1}, headers=inst)
        assert resp.status_code == 404, "another city's agent looks missing"
    cleared = await http.patch(url, json={"max_upload_mbps": None}, headers=inst)
    assert cleared.status_code == 200 and cleared.json()["max_upload_mbps"] is None
    assert await hint(db_pool, agent_a) == (5, {}, None)
    async with db_pool.acquire() as conn:
        audited = await conn.fetch(
            "SELECT details FROM audit_log WHERE action = 'agent.update' ORDER BY id"
        )
    assert [r["details"]["max_upload_mbps"] for r in audited] == [2.5, None]
    assert {r["details"]["agent"] for r in audited} == {str(agent_a)}


async def test_pusher_sends_each_version_once_to_the_agents_queue(
    central_api: CentralProcess, db_pool: asyncpg.Pool, amqp_url: str
) -> None:
    w = await world(db_pool)
    async with db_pool.acquire() as conn:
        agent_a = await conn.fetchval("SELECT agent_id FROM cameras WHERE id = $1", w["cam_a"])
    publisher = CommandPublisher(amqp_url)
    pushed = [watchlists.PUSH, config_hints.PUSH]
    try:
        # Agents A and B (each database is the test's own); no watchlists yet.
        assert await commands.push_due(db_pool, publisher, pushed) == 2, "a first hint each"
        assert await commands.push_due(db_pool, publisher, pushed) == 0, "once per version"
        inst = await central_api.login("instalador@a.example", PASSWORD)
        resp = await central_api.http.patch(
            f"/api/cameras/{w['cam_a']}", json={"enabled": False}, headers=inst
        )
        assert resp.status_code == 200
        assert await config_hints.push_due(db_pool, publisher) == 1
        async with db_pool.acquire() as conn:
            assert await commands.sent_version(conn, agent_a, "config_hint") == 1
    finally:
        await publisher.close()

    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(agent_command_queue(agent_a))
        got: list[ConfigHint] = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            assert message.type == "config_hint"
            command = decode(message.body, "config_hint")
            assert isinstance(command, ConfigHint)
            assert message.message_id == str(command.hint_id)
            got.append(command)
    finally:
        await connection.close()
    assert [(h.version, h.agent_id) for h in got] == [(0, agent_a), (1, agent_a)]
    assert got[1].hint_id == config_hints.hint_id(agent_a, 1)
    assert got[1].disabled_cameras() == {w["cam_a"]}
