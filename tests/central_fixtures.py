"""Fixtures that run central for real: a migrated database, the HTTP API and the ingest consumer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from minio import Minio

from central import migrate, storage
from central.api import create_app
from central.broker import BrokerAdmin
from central.db import create_pool
from central.ingest import run_ingest
from central.settings import Settings
from devstack.sync_harness import purge_central_queues


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def migrated_db(pg_db_url: str) -> str:
    """A fresh database at the latest migration; returns its URL."""
    await asyncio.to_thread(migrate.upgrade, pg_db_url)
    return pg_db_url


@pytest.fixture
def central_settings(migrated_db: str, rabbitmq: Any, s3: Any, redis_url: str) -> Settings:
    mgmt = urlsplit(rabbitmq.management_url)
    return Settings(
        rabbitmq_management_url=f"http://{rabbitmq.user}:{rabbitmq.password}@{mgmt.netloc}",
        database_url=migrated_db,
        amqp_url=rabbitmq.amqp_url,
        s3_endpoint=s3.endpoint,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        s3_secure=False,
        redis_url=redis_url,
        gtvision_secret_key="test-secret-key-that-is-long-enough-1234",
    )


@pytest.fixture
async def db_pool(central_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(central_settings.database_url.get_secret_value(), max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
def s3_client(central_settings: Settings) -> Minio:
    client = storage.make_client(central_settings)
    storage.ensure_buckets(client)
    return client


@pytest.fixture
async def broker_admin(central_settings: Settings) -> AsyncIterator[BrokerAdmin]:
    assert central_settings.rabbitmq_management_url is not None
    admin = BrokerAdmin(central_settings.rabbitmq_management_url.get_secret_value())
    yield admin
    await admin.aclose()


@dataclass
class CentralProcess:
    url: str
    settings: Settings
    http: httpx.AsyncClient

    async def login(self, email: str, password: str) -> dict[str, str]:
        resp = await self.http.post("/api/auth/login", json={"email": email, "password": password})
        resp.raise_for_status()
        return {"Authorization": f"Bearer {resp.json()['token']}"}


@pytest.fixture
async def central_api(central_settings: Settings) -> AsyncIterator[CentralProcess]:
    """Central's API served by uvicorn on a free port, in this event loop."""
    port = free_port()
    config = uvicorn.Config(
        create_app(central_settings), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    if not server.started:
        await task  # surfaces the start-up error
        raise RuntimeError("central API did not start")
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield CentralProcess(url, central_settings, http)
    server.should_exit = True
    await asyncio.wait_for(task, 30)


@pytest.fixture
async def central_ingest(
    central_settings: Settings, db_pool: asyncpg.Pool, s3_client: Minio
) -> AsyncIterator[asyncio.Event]:
    """Central's consumers running in this event loop until the test ends.

    The broker lives for the whole session: its queues are emptied first, so messages left by
    an earlier test (or its dead letters) cannot leak into this one.
    """
    await purge_central_queues(central_settings.amqp_url.get_secret_value())
    stop = asyncio.Event()
    redis = aioredis.from_url(central_settings.redis_url)
    task = asyncio.create_task(
        run_ingest(central_settings.amqp_url.get_secret_value(), db_pool, s3_client, stop, redis)
    )
    await asyncio.sleep(0.5)
    if task.done():
        task.result()
    yield stop
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    await redis.aclose()
