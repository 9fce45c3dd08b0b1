"""Agents: enrolment, health, revocation, and the endpoints agents themselves call."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from central import agents, cameras, enrolment, presence, storage
from central.api.auth import current_agent, requires
from central.api.fields import Text
from central.api.resources import NOT_FOUND, Res
from central.broker import BrokerAdminError
from central.users import Principal
from shared.messages import SHA256_HEX, CameraHealth, DiskHealth

log = logging.getLogger(__name__)
router = APIRouter(tags=["agents"])


class EnrolmentTokenRequest(BaseModel):
    cidade_id: UUID
    nome: Text = Field(min_length=1, max_length=255, description="The new agent's name.")


class EnrolmentTokenOut(BaseModel):
    token: str = Field(description="One-time; shown only now.")
    expires_at: datetime


class EnrolRequest(BaseModel):
    token: Text = Field(min_length=20, max_length=200)


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
    pending_blob_bytes: int | None = Field(description="Video and images not yet uploaded.")
    clock_sync: str = Field(description="`synced` (NTP), `unsynced` or `unknown`.")
    clock_error_ms: int | None = Field(description="The agent kernel's clock error bound.")
    clock_offset_ms: int | None = Field(
        description="Agent clock minus central's at the last heartbeat (plus transit time)."
    )
    disk: DiskHealth | None = Field(description="Spool usage against the disk budget.")
    cameras: list[CameraHealth] = Field(description="Each camera's recorder, last reported.")


class UploadRequest(BaseModel):
    kind: Literal["segment", "thumbnail", "crop"] = Field(
        description="segment: an MP4; thumbnail: a camera's view; crop: a plate read's "
        "evidence JPEG (object_id is the read's id)."
    )
    camera_id: UUID
    object_id: UUID
    size_bytes: int = Field(ge=1, le=8 * 1024**3)
    sha256: str = Field(pattern=SHA256_HEX)


class UploadGrant(BaseModel):
    bucket: str
    key: str
    url: str
    expires_in_s: int


@router.post("/api/agents/enrolment-tokens", status_code=201, responses=NOT_FOUND)
async def create_enrolment_token(
    body: EnrolmentTokenRequest,
    r: Res,
    who: Annotated[Principal, Depends(requires("agents:admin"))],
) -> EnrolmentTokenOut:
    """A one-time token for installing a new agent in a city (expires; single use)."""
    async with r.pool.acquire() as conn:
        if not who.sees(body.cidade_id) or not await conn.fetchval(
            "SELECT 1 FROM cidades WHERE id = $1", body.cidade_id
        ):
            raise HTTPException(404, "city not found")
        token, expires = await enrolment.create_token(
            conn, body.cidade_id, body.nome, who.user_id, r.settings.enrolment_token_ttl_s
        )
    return EnrolmentTokenOut(token=token, expires_at=expires)


@router.post("/api/agent/v1/enroll")
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
        raise HTTPException(503, "the message broker could not create the agent's user") from None
    return EnrolResponse(
        agent_id=done.agent_id, city_id=done.city_id, api_token=done.api_token,
        amqp_url=done.amqp_url,
    )  # fmt: skip


@router.get("/api/agents")
async def list_agents(
    r: Res, who: Annotated[Principal, Depends(requires("agents:read"))]
) -> list[AgentHealth]:
    """Agents with their health: online, last heartbeat, outbox backlog."""
    async with r.pool.acquire() as conn:
        rows = await presence.agents_health(conn, r.redis, who.city_list())
    return [AgentHealth(**row) for row in rows]


@router.post("/api/agents/{agent_id}/revoke", status_code=204, responses=NOT_FOUND)
async def revoke_agent(
    agent_id: UUID, r: Res, who: Annotated[Principal, Depends(requires("agents:admin"))]
) -> None:
    """Revoke an agent: its API token stops working and its broker user is deleted."""
    broker = r.require_broker()
    async with r.pool.acquire() as conn:
        city = await conn.fetchval("SELECT cidade_id FROM agents WHERE id = $1", agent_id)
        if city is None or not who.sees(city):
            raise HTTPException(404, "agent not found")
        await enrolment.revoke(conn, broker, agent_id)


@router.post("/api/agent/v1/uploads")
async def upload_grant(
    body: UploadRequest, r: Res, agent: Annotated[agents.Agent, Depends(current_agent)]
) -> UploadGrant:
    """A short-lived presigned PUT URL for one object under the agent's city (claim-check)."""
    async with r.pool.acquire() as conn:
        city = await cameras.camera_city_for_agent(conn, body.camera_id, agent.id)
    if city is None:
        raise HTTPException(404, "camera not found")
    bucket, make_key = storage.UPLOAD_KINDS[body.kind]
    key = make_key(city, body.camera_id, body.object_id)
    ttl = r.settings.upload_url_ttl_s
    url = await asyncio.to_thread(storage.presign_put, r.s3_public, bucket, key, ttl)
    return UploadGrant(bucket=bucket, key=key, url=url, expires_in_s=ttl)
