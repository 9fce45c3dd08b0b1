"""Enrolment against real PostgreSQL and RabbitMQ: one-time tokens, per-agent broker users that
can publish only their own routing keys, revocation."""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.exceptions import ProbableAuthenticationError
from aiormq.exceptions import ChannelAccessRefused

from central import cities, enrolment, users
from central.broker import BrokerAdmin, BrokerAdminError
from devstack.procs import free_port
from shared.topology import agent_command_queue, declare_topology, find_events_exchange
from tests.central_fixtures import CentralProcess

pytestmark = pytest.mark.timeout(120)
ADMIN = ("admin@example.com", "a long enough password")


async def setup_city(
    central: CentralProcess, pool: asyncpg.Pool
) -> tuple[uuid.UUID, dict[str, str]]:
    async with pool.acquire() as conn:
        await users.ensure_admin(conn, *ADMIN)
        city = await cities.create_city(conn, "Campinas", "SP", 30)
    return city, await central.login(*ADMIN)


async def new_token(central: CentralProcess, headers: dict[str, str], city: uuid.UUID) -> str:
    resp = await central.http.post(
        "/api/agents/enrolment-tokens",
        json={"cidade_id": str(city), "nome": "agente-campinas"},
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    token: str = resp.json()["token"]
    return token


async def test_token_is_single_use_and_expires(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    city, headers = await setup_city(central_api, db_pool)
    token = await new_token(central_api, headers, city)
    first = await central_api.http.post("/api/agent/v1/enroll", json={"token": token})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["city_id"] == str(city)
    assert body["amqp_url"].startswith("amqp://agent-")
    again = await central_api.http.post("/api/agent/v1/enroll", json={"token": token})
    assert (again.status_code, again.json()["detail"]) == (403, "enrolment token already used")

    expired = await new_token(central_api, headers, city)
    async with db_pool.acquire() as conn:
        await conn.execute("UPDATE enrolment_tokens SET expires_at = now() - interval '1 s'")
    resp = await central_api.http.post("/api/agent/v1/enroll", json={"token": expired})
    assert (resp.status_code, resp.json()["detail"]) == (403, "enrolment token expired")
    resp = await central_api.http.post("/api/agent/v1/enroll", json={"token": "x" * 43})
    assert (resp.status_code, resp.json()["detail"]) == (403, "unknown enrolment token")

    anonymous = await central_api.http.post(
        "/api/agents/enrolment-tokens", json={"cidade_id": str(city), "nome": "x"}
    )
    assert anonymous.status_code == 401


async def test_agent_user_publishes_only_its_own_routing_keys(
    central_api: CentralProcess, db_pool: asyncpg.Pool, rabbitmq: Any
) -> None:
    city, headers = await setup_city(central_api, db_pool)
    token = await new_token(central_api, headers, city)
    creds = (await central_api.http.post("/api/agent/v1/enroll", json={"token": token})).json()
    agent_id = creds["agent_id"]

    admin = await aio_pika.connect(rabbitmq.amqp_url)
    async with admin:
        await declare_topology(await admin.channel())

    conn = await aio_pika.connect(creds["amqp_url"])
    async with conn:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=False)
        exchange = await find_events_exchange(channel)  # passive: allowed
        own = f"v1.plate_read.{city}.{agent_id}"
        confirm = await exchange.publish(aio_pika.Message(b"{}"), own, timeout=10)
        assert type(confirm).__name__ == "Ack"

        for foreign in (f"v1.plate_read.{uuid.uuid4()}.{agent_id}", f"v1.segment.{city}.other"):
            channel = await conn.channel(publisher_confirms=True)
            exchange = await find_events_exchange(channel)
            with pytest.raises(ChannelAccessRefused):
                await exchange.publish(aio_pika.Message(b"{}"), foreign, timeout=10)

        channel = await conn.channel()
        with pytest.raises(ChannelAccessRefused):
            await channel.declare_queue("sneaky", durable=True)
        channel = await conn.channel()
        own_queue = await channel.get_queue(agent_command_queue(uuid.UUID(agent_id)))
        assert await own_queue.get(fail=False) is None  # readable, empty
        channel = await conn.channel()
        with pytest.raises(ChannelAccessRefused):
            other = await channel.get_queue("central.plates")
            await other.get(fail=False)


async def test_revoked_agent_loses_api_and_broker_access(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    city, headers = await setup_city(central_api, db_pool)
    token = await new_token(central_api, headers, city)
    creds = (await central_api.http.post("/api/agent/v1/enroll", json={"token": token})).json()
    agent_headers = {"Authorization": f"Bearer {creds['api_token']}"}
    grant = {
        "kind": "segment", "camera_id": str(uuid.uuid4()), "object_id": str(uuid.uuid4()),
        "size_bytes": 1, "sha256": "a" * 64,
    }  # fmt: skip
    before = await central_api.http.post("/api/agent/v1/uploads", json=grant, headers=agent_headers)
    assert before.status_code == 404  # authenticated; that camera is not the agent's
    await (await aio_pika.connect(creds["amqp_url"], timeout=10)).close()  # works before

    resp = await central_api.http.post(f"/api/agents/{creds['agent_id']}/revoke", headers=headers)
    assert resp.status_code == 204
    after = await central_api.http.post("/api/agent/v1/uploads", json=grant, headers=agent_headers)
    assert after.status_code == 401
    with pytest.raises(ProbableAuthenticationError):
        await aio_pika.connect(creds["amqp_url"], timeout=10)
    missing = await central_api.http.post(f"/api/agents/{uuid.uuid4()}/revoke", headers=headers)
    assert missing.status_code == 404


async def test_broker_failure_leaves_the_token_usable(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        city = await cities.create_city(conn, "Santos", "SP", 7)
        token, _ = await enrolment.create_token(conn, city, "a", None, 600)
        dead = BrokerAdmin(f"http://u:p@127.0.0.1:{free_port()}")
        try:
            with pytest.raises(BrokerAdminError):
                await enrolment.enrol(conn, dead, token, "amqp://127.0.0.1/")
        finally:
            await dead.aclose()
        used = await conn.fetchval("SELECT used_at FROM enrolment_tokens")
        agents_made = await conn.fetchval("SELECT count(*) FROM agents")
    assert used is None and agents_made == 0
