"""Mosaics: a user's camera grids (1x1 to 4x4) with each cell's latest thumbnail."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field, model_validator

from central import cameras, mosaics, storage
from central.api.auth import requires
from central.api.fields import Text
from central.api.resources import NOT_FOUND, Res
from central.users import Principal

router = APIRouter(tags=["mosaics"])
CELL_URL_TTL_S = 60


class MosaicIn(BaseModel):
    name: Text = Field(min_length=1, max_length=100)
    layout: Literal["1x1", "2x2", "3x3", "4x4"] = "2x2"
    camera_ids: list[UUID] = Field(max_length=16, description="Cells in reading order.")

    @model_validator(mode="after")
    def _fits(self) -> MosaicIn:
        cells = mosaics.LAYOUT_CELLS[self.layout]
        if len(self.camera_ids) > cells:
            raise ValueError(f"camera_ids: {len(self.camera_ids)} cameras in a {self.layout} grid")
        return self


class MosaicOut(MosaicIn):
    id: UUID


class Cell(BaseModel):
    camera_id: UUID
    nome: str
    status: str | None
    thumbnail_url: str | None = Field(description="Presigned, valid for a minute; poll again.")
    thumbnail_at: datetime | None


class MosaicView(MosaicOut):
    cells: list[Cell]


async def _check_cameras(r: Res, who: Principal, camera_ids: list[UUID]) -> None:
    async with r.pool.acquire() as conn:
        for camera_id in camera_ids:
            if await cameras.get_camera(conn, camera_id, who.city_list()) is None:
                raise HTTPException(404, f"camera {camera_id} not found")


@router.get("/api/mosaics")
async def list_mosaics(
    r: Res, who: Annotated[Principal, Depends(requires("cameras:read"))]
) -> list[MosaicOut]:
    async with r.pool.acquire() as conn:
        return [MosaicOut(**m) for m in await mosaics.list_mosaics(conn, who.user_id)]


@router.post("/api/mosaics", status_code=201, responses=NOT_FOUND)
async def create_mosaic(
    body: MosaicIn, r: Res, who: Annotated[Principal, Depends(requires("cameras:read"))]
) -> MosaicOut:
    await _check_cameras(r, who, body.camera_ids)
    async with r.pool.acquire() as conn:
        mosaic_id = await mosaics.create_mosaic(
            conn, who.user_id, body.name, body.layout, body.camera_ids
        )
    return MosaicOut(id=mosaic_id, **body.model_dump())


@router.put("/api/mosaics/{mosaic_id}", responses=NOT_FOUND)
async def update_mosaic(
    mosaic_id: UUID,
    body: MosaicIn,
    r: Res,
    who: Annotated[Principal, Depends(requires("cameras:read"))],
) -> MosaicOut:
    await _check_cameras(r, who, body.camera_ids)
    async with r.pool.acquire() as conn:
        if not await mosaics.update_mosaic(
            conn, mosaic_id, who.user_id, body.name, body.layout, body.camera_ids
        ):
            raise HTTPException(404, "mosaic not found")
    return MosaicOut(id=mosaic_id, **body.model_dump())


@router.delete("/api/mosaics/{mosaic_id}", status_code=204, responses=NOT_FOUND)
async def delete_mosaic(
    mosaic_id: UUID, r: Res, who: Annotated[Principal, Depends(requires("cameras:read"))]
) -> None:
    async with r.pool.acquire() as conn:
        if not await mosaics.delete_mosaic(conn, mosaic_id, who.user_id):
            raise HTTPException(404, "mosaic not found")


@router.get("/api/mosaics/{mosaic_id}", responses=NOT_FOUND)
async def view_mosaic(
    mosaic_id: UUID, r: Res, who: Annotated[Principal, Depends(requires("cameras:read"))]
) -> MosaicView:
    """The mosaic with each cell's camera and latest thumbnail. Cameras the caller may no
    longer see are left out, never shown."""
    async with r.pool.acquire() as conn:
        mosaic = await mosaics.get_mosaic(conn, mosaic_id, who.user_id)
        if mosaic is None:
            raise HTTPException(404, "mosaic not found")
        rows = await conn.fetch(
            "SELECT id, nome, status, thumbnail_key, thumbnail_at FROM cameras"
            " WHERE id = ANY($1::uuid[]) AND ($2::uuid[] IS NULL OR cidade_id = ANY($2))",
            mosaic["camera_ids"], who.city_list(),
        )  # fmt: skip
    visible = {str(row["id"]): row for row in rows}
    cells = []
    for camera_id in mosaic["camera_ids"]:
        row = visible.get(camera_id)
        if row is None:
            continue
        url = None
        if row["thumbnail_key"]:
            url = await asyncio.to_thread(
                storage.presign_get, r.s3_public, "thumbnails", row["thumbnail_key"],
                CELL_URL_TTL_S,
            )  # fmt: skip
        cells.append(
            Cell(camera_id=row["id"], nome=row["nome"], status=row["status"],
                 thumbnail_url=url, thumbnail_at=row["thumbnail_at"])
        )  # fmt: skip
    return MosaicView(cells=cells, **mosaic)
