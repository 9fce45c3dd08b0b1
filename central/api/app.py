"""Assembles the API: resources in the lifespan, the feature routers, and health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException

from central import storage, users
from central.api import agents, auth, cameras, mosaics, plates, watchlists
from central.api import clips as clips_api
from central.api import hls as hls_api
from central.api import users as users_api
from central.api.resources import Res, Resources
from central.broker import BrokerAdmin
from central.db import create_pool
from central.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    """The ASGI app; resources are made in its lifespan and reached through ``app.state``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings.database_url.get_secret_value(), settings.db_pool_max)
        s3 = storage.make_client(settings)
        await asyncio.to_thread(storage.ensure_buckets, s3)
        if settings.gtvision_admin_email and settings.gtvision_admin_password:
            async with pool.acquire() as conn:
                await users.ensure_admin(
                    conn,
                    settings.gtvision_admin_email,
                    settings.gtvision_admin_password.get_secret_value(),
                )
        redis = aioredis.from_url(settings.redis_url)
        mgmt = settings.rabbitmq_management_url
        broker = BrokerAdmin(mgmt.get_secret_value(), settings.rabbitmq_vhost) if mgmt else None
        app.state.res = Resources(
            settings, pool, s3, storage.make_client(settings, public=True), redis, broker
        )
        try:
            yield
        finally:
            if broker is not None:
                await broker.aclose()
            await redis.aclose()
            await pool.close()

    app = FastAPI(
        title="GT-Vision central API",
        version="0.1.0",
        lifespan=lifespan,
        description="Cities, cameras, agents and their recordings. Every query is scoped to "
        "the cities the caller may see; another city's resource answers 404, as a missing one.",
    )
    app.add_api_route("/api/health", health, methods=["GET"], tags=["ops"])
    for router in (
        auth.router, cameras.router, agents.router, mosaics.router, plates.router,
        users_api.router, watchlists.router,
    ):  # fmt: skip
        app.include_router(router)
    app.include_router(clips_api.router)
    app.include_router(hls_api.router)
    return app


async def health(r: Res) -> dict[str, Any]:
    """200 when PostgreSQL, object storage and Redis answer; 503 naming what does not."""
    checks: dict[str, str] = {}
    try:
        async with r.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        checks["database"] = "ok"
    except (OSError, asyncpg.PostgresError) as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        await asyncio.to_thread(r.s3.bucket_exists, "recordings")
        checks["object_storage"] = "ok"
    except Exception as exc:
        checks["object_storage"] = f"error: {type(exc).__name__}"
    try:
        await r.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    if any(v != "ok" for v in checks.values()):
        raise HTTPException(503, checks)
    return checks
