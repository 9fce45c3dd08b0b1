"""Plate search across the caller's cities (exact, prefix, fuzzy), with every search audited."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from central import audit, plates, storage
from central.api.auth import requires
from central.api.fields import decode_cursor, next_cursor
from central.api.resources import NOT_FOUND, Res
from central.users import Principal
from shared.plates import normalize, strip

router = APIRouter(tags=["plates"])
MAX_PAGE = 200
CROP_URL_TTL_S = 120


class PlateHit(BaseModel):
    id: UUID
    camera_id: UUID
    camera: str
    city_id: UUID | None
    plate: str
    confidence: float
    detected_at: datetime = Field(description="UTC.")
    crop_url: str | None = Field(None, description="Presigned; only on the detail endpoint.")
    context_url: str | None = Field(
        None,
        description="The whole frame the crop was cut from, when the camera keeps one; "
        "presigned, only on the detail endpoint.",
    )


class SearchPage(BaseModel):
    items: list[PlateHit]
    next: str | None = Field(description="Pass as `before` for the next (older) page.")


def _query(q: str, mode: str) -> str:
    if mode == "exact":
        plate = normalize(q)
        if plate is None:
            raise HTTPException(422, "q: not a Brazilian plate (ABC1234 or ABC1D23)")
        return plate
    text = strip(q)
    if not 1 <= len(text) <= 7 or (mode == "fuzzy" and len(text) < 5):
        raise HTTPException(422, "q: 1 to 7 letters and digits (fuzzy: at least 5)")
    return text


@router.get("/api/plates")
async def search_plates(
    r: Res,
    who: Annotated[Principal, Depends(requires("plates:search"))],
    q: Annotated[str, Query(min_length=1, max_length=16, description="Plate or part of it.")],
    mode: Literal["exact", "prefix", "fuzzy"] = "exact",
    cidade_id: UUID | None = None,
    camera_id: UUID | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    before: str | None = None,
) -> SearchPage:
    """Reads of a plate, newest first. Fuzzy treats OCR look-alikes (O/0, I/1, B/8, S/5, Z/2,
    G/6) as equal and also finds near misses. Every search is written to the audit log."""
    text = _query(q, mode)
    cursor = decode_cursor(before)
    async with r.pool.acquire() as conn, conn.transaction():
        rows = await plates.search(
            conn, text, mode, who.city_list(), city_id=cidade_id, camera_id=camera_id,
            start=start, end=end, limit=limit, before=cursor,
        )  # fmt: skip
        await audit.record(
            conn, who.user_id, "plates.search",
            {"q": text, "mode": mode, "cidade_id": cidade_id and str(cidade_id),
             "camera_id": camera_id and str(camera_id), "results": len(rows)},
        )  # fmt: skip
    items = [PlateHit(**{k: v for k, v in row.items() if k != "image_url"}) for row in rows]
    return SearchPage(items=items, next=next_cursor(rows, limit, "detected_at"))


@router.get("/api/plates/{read_id}", responses=NOT_FOUND)
async def plate_read(
    read_id: UUID, r: Res, who: Annotated[Principal, Depends(requires("plates:search"))]
) -> PlateHit:
    """One plate read, with short-lived URLs of its evidence crop when there is one (the
    crop the agent uploaded after the read, ``lpr_crops``, or one the read itself named) and
    of its context frame when the camera keeps one."""
    async with r.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {plates.SEARCH_COLUMNS}, k.bucket AS crop_bucket,"  # noqa: S608 - constant
            " k.object_key AS crop_key, k.context_key FROM lpr_events e"
            " JOIN cameras c ON c.id = e.camera_id"
            " LEFT JOIN lpr_crops k ON k.read_id = e.id"
            " WHERE e.id = $1 AND ($2::uuid[] IS NULL OR e.city_id = ANY($2))",
            read_id, who.city_list(),
        )  # fmt: skip
        if row is None:
            raise HTTPException(404, "plate read not found")
        await audit.record(conn, who.user_id, "plates.view", {"read_id": str(read_id)})
    fields = {k: v for k, v in dict(row).items() if k in PlateHit.model_fields}
    fields["detected_at"] = fields["detected_at"].replace(tzinfo=UTC)
    hit = PlateHit(**fields)
    crop: tuple[str, str] | None = None
    if row["image_url"]:
        bucket, _, key = row["image_url"].partition("/")
        crop = bucket, key
    elif (
        row["crop_key"]
        and row["city_id"]
        and row["crop_key"] == storage.crop_key(row["city_id"], row["camera_id"], read_id)
    ):
        # Only the object named by the read's own city and camera: a crop is stored before its
        # read may exist, so its key is checked against the read here.
        crop = row["crop_bucket"], row["crop_key"]
        if row["context_key"] == storage.context_key(row["city_id"], row["camera_id"], read_id):
            hit.context_url = await asyncio.to_thread(
                storage.presign_get, r.s3_public, row["crop_bucket"], row["context_key"],
                CROP_URL_TTL_S,
            )  # fmt: skip
    if crop is not None:
        hit.crop_url = await asyncio.to_thread(
            storage.presign_get, r.s3_public, crop[0], crop[1], CROP_URL_TTL_S
        )
    return hit
