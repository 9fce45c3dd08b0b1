"""Cities, cameras and their recorded segments, scoped to the caller's cities."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Annotated, Literal
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from central import audit, cameras, cities, config_hints, recordings, segments, storage
from central.api.auth import requires
from central.api.fields import Text
from central.api.resources import NOT_FOUND, Res
from central.users import Principal

router = APIRouter()
THUMBNAIL_URL_TTL_S = 60
MAX_TIMELINE = timedelta(days=31)


class CityIn(BaseModel):
    nome: Text = Field(min_length=1, max_length=255)
    estado: str = Field(pattern=r"^[A-Z]{2}$", description="UF, e.g. SP.")
    plano_retencao_dias: int = Field(description="Retention plan: 7, 15 or 30 days.")


class CityOut(CityIn):
    id: UUID
    created_at: datetime | None


class CameraIn(BaseModel):
    cidade_id: UUID
    nome: Text = Field(min_length=1, max_length=255)
    url_rtsp: Text = Field(
        min_length=8, max_length=500, pattern=r"^rtsps?://", description="Without credentials."
    )
    localizacao: Text | None = Field(None, max_length=500)
    agent_id: UUID | None = Field(None, description="The city's agent that records it.")


class CityPatch(BaseModel):
    """Only the fields given change."""

    nome: Text | None = Field(None, min_length=1, max_length=255)
    estado: str | None = Field(None, pattern=r"^[A-Z]{2}$")
    plano_retencao_dias: int | None = Field(
        None,
        description="7, 15 or 30 days; shortening it lets the next retention pass remove "
        "what is older.",
    )


class CameraPatch(BaseModel):
    """Only the fields given change; `localizacao` or `agent_id` set to null clears them.
    Changing `enabled` or `agent_id` sends the city's agents a config hint."""

    nome: Text | None = Field(None, min_length=1, max_length=255)
    url_rtsp: Text | None = Field(None, min_length=8, max_length=500, pattern=r"^rtsps?://")
    localizacao: Text | None = Field(None, max_length=500)
    agent_id: UUID | None = None
    enabled: bool | None = Field(
        None,
        description="false: no agent records it or reads its plates (its agent is told by a "
        "config hint, whatever its YAML says); true: recorded again as the agent's YAML says.",
    )


class CameraOut(CameraIn):
    id: UUID
    enabled: bool = Field(description="false: disabled at central, recorded by no agent.")
    status: str | None = Field(
        description="As its agent last reported: online, offline, error or disabled (seed "
        "default INATIVA until then)."
    )
    status_reason: str | None = Field(None, description="Why, in words (no credentials).")
    status_at: datetime | None = Field(None, description="When the agent last reported it.")
    created_at: datetime | None


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
    run_id: UUID | None = Field(description="The RTSP session: a new run follows a gap.")
    time_source: Literal["live", "recovered"]
    clock_sync: Literal["synced", "unsynced", "unknown"] = Field(
        description="Was the agent's clock disciplined by NTP when it stamped the segment?"
    )
    clock_error_ms: int | None = Field(description="The agent kernel's clock error bound then.")
    shifted_ms: int = Field(
        description="Moved forward so a clock stepped back does not overlap earlier video."
    )


@router.get("/api/cities", tags=["cities"])
async def list_cities(
    r: Res, who: Annotated[Principal, Depends(requires("cities:read"))]
) -> list[CityOut]:
    async with r.pool.acquire() as conn:
        return [CityOut(**c) for c in await cities.list_cities(conn, who.city_list())]


@router.post("/api/cities", tags=["cities"], status_code=201)
async def create_city(
    body: CityIn, r: Res, _who: Annotated[Principal, Depends(requires("cities:admin"))]
) -> CityOut:
    if body.plano_retencao_dias not in (7, 15, 30):
        raise HTTPException(422, "plano_retencao_dias: must be 7, 15 or 30")
    async with r.pool.acquire() as conn:
        city_id = await cities.create_city(conn, body.nome, body.estado, body.plano_retencao_dias)
        row = await cities.get_city(conn, city_id, None)
    assert row is not None
    return CityOut(**row)


@router.get("/api/cities/{city_id}", tags=["cities"], responses=NOT_FOUND)
async def get_city(
    city_id: UUID, r: Res, who: Annotated[Principal, Depends(requires("cities:read"))]
) -> CityOut:
    async with r.pool.acquire() as conn:
        row = await cities.get_city(conn, city_id, who.city_list())
    if row is None:
        raise HTTPException(404, "city not found")
    return CityOut(**row)


@router.patch("/api/cities/{city_id}", tags=["cities"], responses=NOT_FOUND)
async def update_city(
    city_id: UUID,
    body: CityPatch,
    r: Res,
    who: Annotated[Principal, Depends(requires("cities:admin"))],
) -> CityOut:
    changes = body.model_dump(exclude_none=True)
    if not changes:
        raise HTTPException(422, "nothing to change")
    if body.plano_retencao_dias is not None and body.plano_retencao_dias not in (7, 15, 30):
        raise HTTPException(422, "plano_retencao_dias: must be 7, 15 or 30")
    async with r.pool.acquire() as conn, conn.transaction():
        if not await cities.update_city(conn, city_id, who.city_list(), changes):
            raise HTTPException(404, "city not found")
        await audit.record(conn, who.user_id, "city.update", {"city": str(city_id), **changes})
        row = await cities.get_city(conn, city_id, None)
    assert row is not None
    return CityOut(**row)


@router.get("/api/cameras", tags=["cameras"])
async def list_cameras(
    r: Res,
    who: Annotated[Principal, Depends(requires("cameras:read"))],
    cidade_id: UUID | None = None,
) -> list[CameraOut]:
    async with r.pool.acquire() as conn:
        rows = await cameras.list_cameras(conn, who.city_list(), cidade_id)
    return [CameraOut(**c) for c in rows]


@router.post("/api/cameras", tags=["cameras"], status_code=201, responses=NOT_FOUND)
async def create_camera(
    body: CameraIn, r: Res, who: Annotated[Principal, Depends(requires("cameras:admin"))]
) -> CameraOut:
    async with r.pool.acquire() as conn:
        if not who.sees(body.cidade_id) or not await cities.get_city(conn, body.cidade_id, None):
            raise HTTPException(404, "city not found")
        if body.agent_id is not None and not await conn.fetchval(
            "SELECT 1 FROM agents WHERE id = $1 AND cidade_id = $2", body.agent_id, body.cidade_id
        ):
            raise HTTPException(422, "agent_id: not an agent of this city")
        try:
            camera_id = await cameras.create_camera(
                conn, body.cidade_id, body.nome, body.url_rtsp, body.agent_id, body.localizacao
            )
        except asyncpg.ForeignKeyViolationError:  # the city vanished meanwhile
            raise HTTPException(404, "city not found") from None
        if body.agent_id is not None:  # the city's other agents must leave it alone
            await config_hints.bump_city(conn, body.cidade_id)
        row = await cameras.get_camera(conn, camera_id, None)
    assert row is not None
    return CameraOut(**row)


@router.get("/api/cameras/{camera_id}", tags=["cameras"], responses=NOT_FOUND)
async def get_camera(
    camera_id: UUID, r: Res, who: Annotated[Principal, Depends(requires("cameras:read"))]
) -> CameraOut:
    async with r.pool.acquire() as conn:
        row = await cameras.get_camera(conn, camera_id, who.city_list())
    if row is None:
        raise HTTPException(404, "camera not found")
    return CameraOut(**row)


@router.patch("/api/cameras/{camera_id}", tags=["cameras"], responses=NOT_FOUND)
async def update_camera(
    camera_id: UUID,
    body: CameraPatch,
    r: Res,
    who: Annotated[Principal, Depends(requires("cameras:admin"))],
) -> CameraOut:
    changes = body.model_dump(exclude_unset=True)
    for key in ("nome", "url_rtsp", "enabled"):
        if key in changes and changes[key] is None:
            raise HTTPException(422, f"{key}: cannot be null")
    if not changes:
        raise HTTPException(422, "nothing to change")
    async with r.pool.acquire() as conn, conn.transaction():
        row = await cameras.get_camera(conn, camera_id, who.city_list())
        if row is None:
            raise HTTPException(404, "camera not found")
        if changes.get("agent_id") is not None and not await conn.fetchval(
            "SELECT 1 FROM agents WHERE id = $1 AND cidade_id = $2",
            changes["agent_id"], row["cidade_id"],
        ):  # fmt: skip
            raise HTTPException(422, "agent_id: not an agent of this city")
        await cameras.update_camera(conn, camera_id, changes)
        if {"enabled", "agent_id"} & set(changes):  # which agent records it: tell the city's
            await config_hints.bump_city(conn, row["cidade_id"])
        details = {"camera": str(camera_id), **{k: str(v) for k, v in changes.items()}}
        await audit.record(conn, who.user_id, "camera.update", details)
        row = await cameras.get_camera(conn, camera_id, None)
    assert row is not None
    return CameraOut(**row)


@router.delete(
    "/api/cameras/{camera_id}",
    tags=["cameras"],
    status_code=204,
    responses=NOT_FOUND | {409: {"description": "The camera has footage or plate reads."}},
)
async def delete_camera(
    camera_id: UUID, r: Res, who: Annotated[Principal, Depends(requires("cameras:admin"))]
) -> None:
    """Delete a camera that has nothing recorded. A camera with footage, plate reads or clips is
    refused (409): detach it from its agent instead and let retention expire its data."""
    async with r.pool.acquire() as conn, conn.transaction():
        if await cameras.get_camera(conn, camera_id, who.city_list()) is None:
            raise HTTPException(404, "camera not found")
        held = {k: v for k, v in (await cameras.camera_footage(conn, camera_id)).items() if v}
        if held:
            raise HTTPException(
                409, f"camera has {held}; set agent_id to null and let retention expire them"
            )
        await cameras.delete_camera(conn, camera_id)
        await audit.record(conn, who.user_id, "camera.delete", {"camera": str(camera_id)})


class StreamOut(BaseModel):
    id: UUID
    camera_id: UUID
    source_url: str = Field(description="Without credentials.")
    status: str | None
    started_at: datetime | None
    stopped_at: datetime | None


class RecordingOut(BaseModel):
    """One run of the camera (an RTSP session of its agent): continuous footage."""

    id: UUID = Field(description="The run's id.")
    stream_id: UUID
    retention_days: int
    status: str | None = Field(description="RECORDING (the newest, recent run) or STOPPED.")
    started_at: datetime | None
    stopped_at: datetime | None
    segments: int
    duration_ms: int
    size_bytes: int
    first_start: datetime | None
    last_end: datetime | None


@router.get("/api/cameras/{camera_id}/streams", tags=["recordings"], responses=NOT_FOUND)
async def camera_streams(
    camera_id: UUID, r: Res, who: Annotated[Principal, Depends(requires("recordings:read"))]
) -> list[StreamOut]:
    """The camera's streams (one per source URL it has had)."""
    async with r.pool.acquire() as conn:
        if await cameras.get_camera(conn, camera_id, who.city_list()) is None:
            raise HTTPException(404, "camera not found")
        rows = await recordings.list_streams(conn, camera_id)
    return [StreamOut(**row) for row in rows]


@router.get("/api/cameras/{camera_id}/recordings", tags=["recordings"], responses=NOT_FOUND)
async def camera_recordings(
    camera_id: UUID,
    r: Res,
    who: Annotated[Principal, Depends(requires("recordings:read"))],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RecordingOut]:
    """The camera's recordings (runs), newest first."""
    async with r.pool.acquire() as conn:
        if await cameras.get_camera(conn, camera_id, who.city_list()) is None:
            raise HTTPException(404, "camera not found")
        rows = await recordings.list_recordings(conn, camera_id, limit)
    return [RecordingOut(**row) for row in rows]


class Interval(BaseModel):
    start: datetime
    end: datetime


class TimelineOut(BaseModel):
    start: datetime
    end: datetime
    recorded: list[Interval] = Field(description="Continuous footage central holds.")
    gaps: list[Interval] = Field(description="Holes: nothing recorded, lost, or not synced yet.")
    segments: int
    truncated: bool = Field(description="More segments than one page: narrow the range.")


class ThumbnailOut(BaseModel):
    url: str = Field(description="Presigned GET URL of the JPEG; valid for a minute.")
    taken_at: datetime


@router.get("/api/cameras/{camera_id}/thumbnail", tags=["cameras"], responses=NOT_FOUND)
async def camera_thumbnail(
    camera_id: UUID, r: Res, who: Annotated[Principal, Depends(requires("cameras:read"))]
) -> ThumbnailOut:
    """The camera's latest view (for mosaics): 404 until its agent has sent one."""
    async with r.pool.acquire() as conn:
        row = await cameras.get_camera(conn, camera_id, who.city_list())
        thumb = row and await conn.fetchrow(
            "SELECT thumbnail_key, thumbnail_at FROM cameras WHERE id = $1", camera_id
        )
    if not thumb or thumb["thumbnail_key"] is None:
        raise HTTPException(404, "camera not found or no thumbnail yet")
    url = await asyncio.to_thread(
        storage.presign_get, r.s3_public, "thumbnails", thumb["thumbnail_key"], THUMBNAIL_URL_TTL_S
    )
    return ThumbnailOut(url=url, taken_at=thumb["thumbnail_at"])


@router.get("/api/cameras/{camera_id}/segments", tags=["recordings"], responses=NOT_FOUND)
async def camera_segments(
    camera_id: UUID,
    r: Res,
    who: Annotated[Principal, Depends(requires("recordings:read"))],
    start: datetime | None = None,
    end: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=segments.MAX_PAGE)] = 100,
) -> list[SegmentOut]:
    """Segments of a camera overlapping [start, end), oldest first."""
    async with r.pool.acquire() as conn:
        if await cameras.get_camera(conn, camera_id, who.city_list()) is None:
            raise HTTPException(404, "camera not found")
        rows = await segments.list_segments(conn, camera_id, start, end, limit)
    return [SegmentOut(**row) for row in rows]


@router.get("/api/cameras/{camera_id}/timeline", tags=["recordings"], responses=NOT_FOUND)
async def camera_timeline(
    camera_id: UUID,
    start: datetime,
    end: datetime,
    r: Res,
    who: Annotated[Principal, Depends(requires("recordings:read"))],
) -> TimelineOut:
    """What central holds for a camera in [start, end): recorded intervals and explicit gaps."""
    if start.tzinfo is None or end.tzinfo is None:
        raise HTTPException(422, "start, end: give a time zone (e.g. 2026-01-31T12:00:00Z)")
    if not start < end or end - start > MAX_TIMELINE:
        raise HTTPException(422, "end: must be after start, at most 31 days later")
    async with r.pool.acquire() as conn:
        if await cameras.get_camera(conn, camera_id, who.city_list()) is None:
            raise HTTPException(404, "camera not found")
        rows = await segments.list_segments(conn, camera_id, start, end, segments.MAX_PAGE + 1)
    truncated = len(rows) > segments.MAX_PAGE
    recorded, gaps = segments.coverage(rows[: segments.MAX_PAGE], start, end)
    return TimelineOut(
        start=start, end=end, segments=min(len(rows), segments.MAX_PAGE), truncated=truncated,
        recorded=[Interval(start=s, end=e) for s, e in recorded],
        gaps=[Interval(start=s, end=e) for s, e in gaps],
    )  # fmt: skip
