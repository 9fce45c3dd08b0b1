"""Central's HTTP API (FastAPI): health, login, agent upload grants, camera segments."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from minio import Minio
from pydantic import BaseModel, Field

from central import agents, cameras, enrolment, presence, segments, storage, users
from central.broker import BrokerAdmin, BrokerAdminError, split_credentials
from central.db import create_pool
from central.settings import Settings
from shared.messages import SHA256_HEX

log = logging.getLogger(__name__)
bearer = HTTPBearer(auto_error=False)


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    s3: Minio
    s3_public: Minio
    redis: aioredis.Redis
    broker: BrokerAdmin | None

    def require_broker(self) -> BrokerAdmin:
        if self.broker is None:
            raise HTTPException(503, "agent enrolment needs RABBITMQ_MANAGEMENT_URL")
        return self.broker

    def agent_amqp_base(self) -> str:
        if self.settings.agent_amqp_url:
            return self.settings.agent_amqp_url
        plain, _ = split_credentials(self.settings.amqp_url.get_secret_value())
        return plain


def create_app(settings: Settings) -> FastAPI:
    """The ASGI app; resources are made in its lifespan and reached through ``app.state``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings.database_url.get_secret_value(), settings.db_pool_max)
        s3 = storage.make_client(settings)
        await asyncio.to_thread(storage.ensure_buckets, s3)
        if settings.gtvision_admin_email and settings.gtvision_admin_password:
            async with pool.acquire() as conn:
                await users.ensure_user(
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
        description="Cities, cameras, agents and their recordings.",
    )
    _routes(app)
    _enrolment_routes(app)
    return app


def res(request: Request) -> Resources:
    r: Resources = request.app.state.res
    return r


Res = Annotated[Resources, Depends(res)]
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def current_user(r: Res, creds: Creds) -> UUID:
    """The logged-in user from ``Authorization: Bearer <session token>``, else 401."""
    user = creds and users.verify_token(
        creds.credentials, r.settings.gtvision_secret_key.get_secret_value()
    )
    if not user:
        raise HTTPException(401, "login required", headers={"WWW-Authenticate": "Bearer"})
    return user


async def current_agent(r: Res, creds: Creds) -> agents.Agent:
    """The agent from ``Authorization: Bearer <agent token>``, else 401."""
    agent = None
    if creds is not None:
        async with r.pool.acquire() as conn:
            agent = await agents.agent_by_token(conn, creds.credentials)
    if agent is None:
        raise HTTPException(401, "unknown or revoked agent token")
    return agent


class LoginRequest(BaseModel):
    email: str = Field(max_length=255)
    password: str = Field(max_length=1024)


class LoginResponse(BaseModel):
    token: str
    expires_in_s: int


class UploadRequest(BaseModel):
    kind: Literal["segment"]
    camera_id: UUID
    object_id: UUID
    size_bytes: int = Field(ge=1, le=8 * 1024**3)
    sha256: str = Field(pattern=SHA256_HEX)


class UploadGrant(BaseModel):
    bucket: str
    key: str
    url: str
    expires_in_s: int


class EnrolmentTokenRequest(BaseModel):
    cidade_id: UUID
    nome: str = Field(min_length=1, max_length=255, description="The new agent's name.")


class EnrolmentTokenOut(BaseModel):
    token: str = Field(description="One-time; shown only now.")
    expires_at: datetime


class EnrolRequest(BaseModel):
    token: str = Field(min_length=20, max_length=200)


class EnrolResponse(BaseModel):
    agent_id: UUID
    city_id: UUID
    api_token: str
    amqp_url: str


class AgentHealth(BaseModel):
    id: UUID
    nome: str
    cidade_id: UUID
    cidade: str
    is_active: bool
    online: bool = Field(description="Heartbeat within the last 45 s.")
    last_seen_at: datetime | None
    outbox_pending: dict[str, int] = Field(description="Unsent rows per kind, last reported.")
    oldest_pending_age_ms: int | None
    agent_version: str | None


class SegmentOut(BaseModel):
    id: UUID
    camera_id: UUID
    start_time: datetime
    end_time: datetime
    duration_ms: int
    codec: str
    bucket: str
    object_key: str
    size_bytes: int
    sha256: str
    received_at: datetime


def _routes(app: FastAPI) -> None:
    @app.get("/api/health", tags=["ops"])
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

    @app.post("/api/auth/login", tags=["auth"])
    async def login(body: LoginRequest, r: Res) -> LoginResponse:
        async with r.pool.acquire() as conn:
            user = await users.authenticate(conn, body.email, body.password)
        if user is None:
            raise HTTPException(401, "wrong e-mail or password")
        token = users.issue_token(user, r.settings.gtvision_secret_key.get_secret_value())
        return LoginResponse(token=token, expires_in_s=users.SESSION_TTL_S)

    @app.get("/api/cameras/{camera_id}/segments", tags=["recordings"])
    async def camera_segments(
        camera_id: UUID,
        r: Res,
        _user: Annotated[UUID, Depends(current_user)],
        start: datetime | None = None,
        end: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=segments.MAX_PAGE)] = 100,
    ) -> list[SegmentOut]:
        """Segments of a camera overlapping [start, end), oldest first."""
        async with r.pool.acquire() as conn:
            if not await conn.fetchval("SELECT 1 FROM cameras WHERE id = $1", camera_id):
                raise HTTPException(404, "camera not found")
            rows = await segments.list_segments(conn, camera_id, start, end, limit)
        return [SegmentOut(**row) for row in rows]

    @app.post("/api/agent/v1/uploads", tags=["agents"])
    async def upload_grant(
        body: UploadRequest, r: Res, agent: Annotated[agents.Agent, Depends(current_agent)]
    ) -> UploadGrant:
        """A short-lived presigned PUT URL for one object under the agent's city (claim-check)."""
        async with r.pool.acquire() as conn:
            city = await cameras.camera_city_for_agent(conn, body.camera_id, agent.id)
        if city is None:
            raise HTTPException(404, "camera not found")
        key = storage.segment_key(city, body.camera_id, body.object_id)
        ttl = r.settings.upload_url_ttl_s
        url = await asyncio.to_thread(storage.presign_put, r.s3_public, "recordings", key, ttl)
        return UploadGrant(bucket="recordings", key=key, url=url, expires_in_s=ttl)


def _enrolment_routes(app: FastAPI) -> None:
    @app.post("/api/agents/enrolment-tokens", tags=["agents"], status_code=201)
    async def create_enrolment_token(
        body: EnrolmentTokenRequest, r: Res, user: Annotated[UUID, Depends(current_user)]
    ) -> EnrolmentTokenOut:
        """A one-time token for installing a new agent in a city (expires; single use)."""
        async with r.pool.acquire() as conn:
            if not await conn.fetchval("SELECT 1 FROM cidades WHERE id = $1", body.cidade_id):
                raise HTTPException(404, "city not found")
            token, expires = await enrolment.create_token(
                conn, body.cidade_id, body.nome, user, r.settings.enrolment_token_ttl_s
            )
        return EnrolmentTokenOut(token=token, expires_at=expires)

    @app.post("/api/agent/v1/enroll", tags=["agents"])
    async def enroll(body: EnrolRequest, r: Res) -> EnrolResponse:
        """Exchange a one-time token for the agent's credentials (API token, broker user)."""
        broker = r.require_broker()
        try:
            async with r.pool.acquire() as conn:
                done = await enrolment.enrol(conn, broker, body.token, r.agent_amqp_base())
        except enrolment.EnrolmentError as exc:
            raise HTTPException(403, str(exc)) from None
        except BrokerAdminError as exc:
            log.error("enrolment failed at the broker: %s", exc)
            raise HTTPException(
                503, "the message broker could not create the agent's user"
            ) from None
        return EnrolResponse(
            agent_id=done.agent_id,
            city_id=done.city_id,
            api_token=done.api_token,
            amqp_url=done.amqp_url,
        )

    @app.get("/api/agents", tags=["agents"])
    async def list_agents(
        r: Res, _user: Annotated[UUID, Depends(current_user)]
    ) -> list[AgentHealth]:
        """Agents with their health: online, last heartbeat, outbox backlog."""
        async with r.pool.acquire() as conn:
            rows = await presence.agents_health(conn, r.redis)
        return [AgentHealth(**row) for row in rows]

    @app.post("/api/agents/{agent_id}/revoke", tags=["agents"], status_code=204)
    async def revoke_agent(
        agent_id: UUID, r: Res, _user: Annotated[UUID, Depends(current_user)]
    ) -> None:
        """Revoke an agent: its API token stops working and its broker user is deleted."""
        broker = r.require_broker()
        async with r.pool.acquire() as conn:
            if not await enrolment.revoke(conn, broker, agent_id):
                raise HTTPException(404, "agent not found")
