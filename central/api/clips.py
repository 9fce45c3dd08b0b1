"""Clips (exports): request one for a camera and time range, follow it, download it when READY.

Creating a clip is an export of personal data (LGPD): it is written to the audit log in the
same transaction, and so is every download URL handed out. The clip worker does the work
(central/clipworker.py, docs/design/clips.md).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from central import audit, cameras, clips, storage
from central.api.auth import requires
from central.api.cameras import Interval
from central.api.resources import NOT_FOUND, Res
from central.users import Principal

router = APIRouter(tags=["clips"])
DOWNLOAD_URL_TTL_S = 300
# A clip may end a little after "now" as the caller's clock sees it, not in the future.
CLOCK_SLACK = timedelta(seconds=5)


class ClipIn(BaseModel):
    start: datetime = Field(description="With a time zone, e.g. 2026-01-31T12:00:00Z.")
    end: datetime = Field(description="After start, at most 30 minutes later, not in the future.")
    keep: bool = Field(False, description="Evidence: retention never deletes a kept clip.")


class KeepIn(BaseModel):
    keep: bool


class ClipOut(BaseModel):
    id: UUID
    camera_id: UUID
    start: datetime
    end: datetime
    status: Literal["PENDING", "READY", "FAILED"]
    keep: bool
    reason: str | None = Field(description="Progress while PENDING; why, when FAILED; notes.")
    gaps: list[Interval] = Field(description="Parts of the range with no video in the clip.")
    segments: int | None
    duration_ms: int | None = Field(description="Of the clip file (ffprobe).")
    size_bytes: int | None
    sha256: str | None
    created_at: datetime
    finished_at: datetime | None
    download_url: str | None = Field(
        None, description="Presigned GET URL of the MP4, valid for 5 minutes (READY only)."
    )


def _out(row: dict[str, object]) -> ClipOut:
    gaps = row["gaps"] if isinstance(row["gaps"], list) else []
    return ClipOut.model_validate(
        {**row, "start": row["start_time"], "end": row["end_time"], "gaps": gaps}
    )


def _check_range(body: ClipIn) -> None:
    if body.start.tzinfo is None or body.end.tzinfo is None:
        raise HTTPException(422, "start, end: give a time zone (e.g. 2026-01-31T12:00:00Z)")
    # First, so that no arithmetic below can overflow on year 1 or 9999.
    if not (2000 <= body.start.year <= 2200 and 2000 <= body.end.year <= 2200):
        raise HTTPException(422, "start, end: must be between the years 2000 and 2200")
    if not body.start < body.end or body.end - body.start > clips.MAX_LENGTH:
        raise HTTPException(422, "end: must be after start, at most 30 minutes later")
    if body.end > datetime.now(UTC) + CLOCK_SLACK:
        raise HTTPException(422, "end: must not be in the future")


@router.post("/api/cameras/{camera_id}/clips", status_code=201, responses=NOT_FOUND, tags=["clips"])
async def create_clip(
    camera_id: UUID,
    body: ClipIn,
    r: Res,
    who: Annotated[Principal, Depends(requires("clips:create"))],
) -> ClipOut:
    """Ask for a clip of [start, end): PENDING now, READY (or FAILED, saying why) once the clip
    worker has joined the segments, without re-encoding. Audited as an export."""
    _check_range(body)
    async with r.pool.acquire() as conn, conn.transaction():
        if await cameras.get_camera(conn, camera_id, who.city_list()) is None:
            raise HTTPException(404, "camera not found")
        clip_id = await clips.create_clip(
            conn, camera_id, body.start, body.end, who.user_id, body.keep
        )
        await audit.record(
            conn, who.user_id, "clips.create",
            {"clip_id": str(clip_id), "camera_id": str(camera_id),
             "start": body.start.isoformat(), "end": body.end.isoformat(), "keep": body.keep},
        )  # fmt: skip
        row = await clips.get_clip(conn, clip_id, None)
    assert row is not None
    return _out(row)


@router.get("/api/clips/{clip_id}", responses=NOT_FOUND)
async def get_clip(
    clip_id: UUID, r: Res, who: Annotated[Principal, Depends(requires("recordings:read"))]
) -> ClipOut:
    """A clip's state; when READY, with a short-lived download URL (audited)."""
    async with r.pool.acquire() as conn, conn.transaction():
        row = await clips.get_clip(conn, clip_id, who.city_list())
        if row is None:
            raise HTTPException(404, "clip not found")
        if row["status"] == "READY":
            await audit.record(conn, who.user_id, "clips.download", {"clip_id": str(clip_id)})
    out = _out(row)
    if row["status"] == "READY" and row["storage_path"]:
        bucket, _, key = str(row["storage_path"]).partition("/")
        out.download_url = await asyncio.to_thread(
            storage.presign_get, r.s3_public, bucket, key, DOWNLOAD_URL_TTL_S
        )
    return out


@router.get("/api/cameras/{camera_id}/clips", responses=NOT_FOUND)
async def list_camera_clips(
    camera_id: UUID,
    r: Res,
    who: Annotated[Principal, Depends(requires("recordings:read"))],
    limit: Annotated[int, Query(ge=1, le=clips.MAX_PAGE)] = 50,
) -> list[ClipOut]:
    """A camera's clips, newest first (no download URLs: get a clip for one)."""
    async with r.pool.acquire() as conn:
        if await cameras.get_camera(conn, camera_id, who.city_list()) is None:
            raise HTTPException(404, "camera not found")
        rows = await clips.list_clips(conn, camera_id, limit)
    return [_out(row) for row in rows]


@router.put("/api/clips/{clip_id}/keep", responses=NOT_FOUND)
async def keep_clip(
    clip_id: UUID,
    body: KeepIn,
    r: Res,
    who: Annotated[Principal, Depends(requires("clips:create"))],
) -> ClipOut:
    """Mark a clip as evidence (retention never deletes it), or release it. Audited."""
    async with r.pool.acquire() as conn, conn.transaction():
        if await clips.get_clip(conn, clip_id, who.city_list()) is None:
            raise HTTPException(404, "clip not found")
        await clips.set_keep(conn, clip_id, body.keep)
        await audit.record(
            conn, who.user_id, "clips.keep", {"clip_id": str(clip_id), "keep": body.keep}
        )
        row = await clips.get_clip(conn, clip_id, None)
    assert row is not None
    return _out(row)
