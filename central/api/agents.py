"""Agents: enrolment, health, revocation, and the endpoints agents themselves call."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

import urllib3
from fastapi import APIRouter, Depends, HTTPException
from minio import Minio
from minio.error import S3Error
from pydantic import BaseModel, Field

from central import agents, audit, cameras, config_hints, enrolment, presence, storage
from central.api.auth import current_agent, requires
from central.api.fields import Text
from central.api.resources import NOT_FOUND, Res
from central.broker import BrokerAdminError
from central.users import Principal
from shared.messages import SHA256_HEX, CameraHealth, DiskHealth

log = logging.getLogger(__name__)
T = TypeVar("T")
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
    kind: Literal["segment", "thumbnail", "crop", "context"] = Field(
        description="segment: an MP4; thumbnail: a camera's view; crop: a plate read's "
        "evidence JPEG, context: the whole frame it was cut from (object_id is the read's id)."
    )
    camera_id: UUID
    object_id: UUID
    size_bytes: int = Field(ge=1, le=8 * 1024**3)
    sha256: str = Field(pattern=SHA256_HEX)
    multipart: bool = Field(
        False,
        description="The agent can upload in parts: objects above central's multipart "
        "threshold then get a multipart grant (agents that do not say so always get one URL).",
    )
    upload_id: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="Fresh part URLs for this multipart upload, already granted (URLs expire; "
        "a slow upload asks again instead of starting over).",
    )


class UploadPart(BaseModel):
    part_number: int = Field(ge=1, le=storage.MAX_PARTS)
    url: str = Field(description="Presigned PUT of this part; its ETag header goes to complete.")


class UploadGrant(BaseModel):
    bucket: str
    key: str
    url: str | None = Field(description="One presigned PUT for the whole object; null when "
                            "it goes in parts.")  # fmt: skip
    expires_in_s: int
    upload_id: str | None = Field(None, description="The multipart upload, if in parts.")
    part_size: int | None = Field(
        None, description="Bytes of each part (the last one holds the rest)."
    )
    parts: list[UploadPart] | None = Field(None, description="One URL per part, in order.")


class UploadRef(BaseModel):
    """A multipart upload of the agent's own: the key is derived as for the grant."""

    kind: Literal["segment", "thumbnail", "crop", "context"]
    camera_id: UUID
    object_id: UUID
    upload_id: str = Field(min_length=1, max_length=1024)


class CompletedPart(BaseModel):
    part_number: int = Field(ge=1, le=storage.MAX_PARTS)
    etag: str = Field(min_length=1, max_length=200, pattern=r"^[^<>&]+$")


class UploadComplete(UploadRef):
    parts: list[CompletedPart] = Field(
        min_length=1, max_length=storage.MAX_PARTS, description="Every part, in order."
    )


class UploadCompleted(BaseModel):
    bucket: str
    key: str
    etag: str = Field(description="The object's ETag (`<hash>-<parts>` for a multipart one).")


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


class AgentPatch(BaseModel):
    """Only the fields given change; the agent is sent a config hint."""

    max_upload_mbps: float | None = Field(
        None,
        gt=0,
        le=100_000,
        description="Cap on the agent's blob uploads in megabits per second; the agent uses "
        "the smaller of it and its own `sync.max_upload_mbps`. null: no cap from central.",
    )


class AgentSettings(BaseModel):
    id: UUID
    cidade_id: UUID
    nome: str
    max_upload_mbps: float | None = Field(description="Central's cap on its blob uploads.")
    config_version: int = Field(description="Its config hint's version (bumped by changes).")


@router.patch("/api/agents/{agent_id}", responses=NOT_FOUND)
async def update_agent(
    agent_id: UUID,
    body: AgentPatch,
    r: Res,
    who: Annotated[Principal, Depends(requires("agents:admin"))],
) -> AgentSettings:
    """Change what central tells the agent to honour over its YAML (a config hint, sent by the
    worker within seconds, or when the agent is next connected)."""
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise HTTPException(422, "nothing to change")
    async with r.pool.acquire() as conn, conn.transaction():
        row = await config_hints.set_agent(conn, agent_id, who.city_list(), changes)
        if row is None:
            raise HTTPException(404, "agent not found")
        await audit.record(conn, who.user_id, "agent.update", {"agent": str(agent_id), **changes})
    return AgentSettings(**row)


@router.post("/api/agent/v1/uploads", responses=NOT_FOUND)
async def upload_grant(
    body: UploadRequest, r: Res, agent: Annotated[agents.Agent, Depends(current_agent)]
) -> UploadGrant:
    """Short-lived presigned PUT URLs for one object under the agent's city (claim-check): one
    URL, or, for an object above the multipart threshold, a multipart upload and a URL per
    part (then `POST /api/agent/v1/uploads/complete`)."""
    bucket, key = await _upload_key(r, agent, body.kind, body.camera_id, body.object_id)
    ttl = r.settings.upload_url_ttl_s
    if not body.multipart or body.size_bytes <= r.settings.multipart_threshold_bytes:
        url = await asyncio.to_thread(storage.presign_put, r.s3_public, bucket, key, ttl)
        return UploadGrant(bucket=bucket, key=key, url=url, expires_in_s=ttl)
    part_size, count = storage.part_plan(body.size_bytes, r.settings.multipart_part_bytes)
    if body.upload_id is None:
        content_type = storage.UPLOAD_CONTENT_TYPES[body.kind]
        upload_id = await _multipart_call(storage.start_multipart, r.s3, bucket, key, content_type)
    else:
        upload_id = _unseal(r, bucket, key, body.upload_id)

    def presign() -> list[UploadPart]:
        return [
            UploadPart(part_number=n, url=storage.presign_part(r.s3_public, bucket, key,
                                                               upload_id, n, ttl))
            for n in range(1, count + 1)
        ]  # fmt: skip

    return UploadGrant(
        bucket=bucket, key=key, url=None, expires_in_s=ttl,
        upload_id=_seal(r, bucket, key, upload_id),
        part_size=part_size, parts=await asyncio.to_thread(presign),
    )  # fmt: skip


@router.post(
    "/api/agent/v1/uploads/complete",
    responses={**NOT_FOUND, 400: {"description": "Parts that do not match the upload."}},
)
async def upload_complete(
    body: UploadComplete, r: Res, agent: Annotated[agents.Agent, Depends(current_agent)]
) -> UploadCompleted:
    """Join a multipart upload's parts into the object. 404 for an upload that is unknown,
    aborted or already completed; 400 for parts that do not match what was uploaded."""
    bucket, key = await _upload_key(r, agent, body.kind, body.camera_id, body.object_id)
    numbers = [p.part_number for p in body.parts]
    if numbers != list(range(1, len(numbers) + 1)):
        raise HTTPException(400, "parts must be numbered 1, 2, 3, ... in order")
    parts = [(p.part_number, p.etag) for p in body.parts]
    upload_id = _unseal(r, bucket, key, body.upload_id)
    etag = await _multipart_call(storage.complete_multipart, r.s3, bucket, key, upload_id, parts)
    return UploadCompleted(bucket=bucket, key=key, etag=etag)


@router.post("/api/agent/v1/uploads/abort", status_code=204, responses=NOT_FOUND)
async def upload_abort(
    body: UploadRef, r: Res, agent: Annotated[agents.Agent, Depends(current_agent)]
) -> None:
    """Discard a multipart upload and the parts uploaded so far (404 if unknown or done)."""
    bucket, key = await _upload_key(r, agent, body.kind, body.camera_id, body.object_id)
    upload_id = _unseal(r, bucket, key, body.upload_id)
    await _multipart_call(storage.abort_multipart, r.s3, bucket, key, upload_id)


async def _upload_key(
    r: Res, agent: agents.Agent, kind: str, camera_id: UUID, object_id: UUID
) -> tuple[str, str]:
    """The bucket and key an agent's object of this kind goes to; 404 unless the camera is
    in the agent's city (so an agent reaches only its own city's keys)."""
    async with r.pool.acquire() as conn:
        city = await cameras.camera_city_for_agent(conn, camera_id, agent.id)
    if city is None:
        raise HTTPException(404, "camera not found")
    bucket, make_key = storage.UPLOAD_KINDS[kind]
    return bucket, make_key(city, camera_id, object_id)


def _seal(r: Res, bucket: str, key: str, upload_id: str) -> str:
    """The upload id handed to the agent: object storage's, bound to its key by a MAC.

    Not every S3 server refuses to complete an upload under another key than the one it was
    created for; the MAC makes central refuse it whatever the server.
    """
    return f"{upload_id}~{_upload_mac(r, bucket, key, upload_id)}"


def _unseal(r: Res, bucket: str, key: str, sealed: str) -> str:
    """Object storage's upload id from a sealed one; 404 unless it was granted for this key."""
    upload_id, _, mac = sealed.rpartition("~")
    expected = _upload_mac(r, bucket, key, upload_id)
    # Bytes: compare_digest refuses str with non-ASCII characters (a forged id may have them).
    if not upload_id or not hmac.compare_digest(mac.encode(), expected.encode()):
        raise HTTPException(404, "no such upload: unknown, aborted or completed")
    return upload_id


def _upload_mac(r: Res, bucket: str, key: str, upload_id: str) -> str:
    secret = r.settings.gtvision_secret_key.get_secret_value().encode()
    message = f"multipart\n{bucket}\n{key}\n{upload_id}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]


async def _multipart_call(
    fn: Callable[..., T], client: Minio, bucket: str, key: str, *args: Any
) -> T:
    """Run a blocking multipart call on object storage; its refusals as the agent's 4xx,
    object storage unreachable or failing as 503 (the agent retries later)."""
    try:
        return await asyncio.to_thread(fn, client, bucket, key, *args)
    except S3Error as exc:
        if exc.code in ("NoSuchUpload", "NoSuchKey"):
            raise HTTPException(404, "no such upload: unknown, aborted or completed") from None
        if exc.code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "MalformedXML",
                        "InvalidArgument", "InvalidRequest"):  # fmt: skip
            raise HTTPException(400, f"object storage refused the parts: {exc.code}") from None
        log.error("multipart %s on %s/%s: %s", fn.__name__, bucket, key, exc)
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        log.error("multipart %s on %s/%s: %r", fn.__name__, bucket, key, exc)
    raise HTTPException(503, "object storage is unavailable")
