"""Watchlists (per city, matched on the city's agents) and the alerts they raise."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from central import alerts, audit, cities, watchlists
from central.api.auth import requires
from central.api.fields import Text, decode_cursor, next_cursor
from central.api.resources import NOT_FOUND, Res
from central.users import Principal
from shared.plates import PLATE_RE, strip

router = APIRouter(tags=["watchlists"])


class WatchlistIn(BaseModel):
    cidade_id: UUID
    name: Text = Field(min_length=1, max_length=100)


class WatchlistOut(BaseModel):
    id: UUID
    cidade_id: UUID
    name: str
    created_at: datetime
    created_by: UUID | None
    entries: int = Field(description="Plates on the list.")


class EntryIn(BaseModel):
    plate: str = Field(
        min_length=7, max_length=10, description="ABC1234, ABC-1234 or ABC1D23; exact."
    )
    reason: Text = Field("", max_length=200, description="Why it is listed (shown on alerts).")


class EntryOut(BaseModel):
    plate: str
    reason: str
    added_at: datetime


class WatchlistView(WatchlistOut):
    plates: list[EntryOut]


class AlertOut(BaseModel):
    id: UUID
    cidade_id: UUID
    camera_id: UUID
    camera: str
    agent_id: UUID
    read_id: UUID = Field(description="The plate read that matched (GET /api/plates/reads/ID).")
    plate: str = Field(description="As read.")
    listed_plate: str = Field(description="The watchlist plate it matched.")
    match: str = Field(description="`exact`, or `possible` (one character apart).")
    detected_at: datetime
    received_at: datetime
    acknowledged_by: UUID | None
    acknowledged_at: datetime | None


class AlertPage(BaseModel):
    items: list[AlertOut]
    next: str | None = Field(description="Pass as `before` for the next (older) page.")


def _plate(text: str) -> str:
    plate = strip(text)
    if not PLATE_RE.match(plate):
        raise HTTPException(422, "plate: not a Brazilian plate (ABC1234 or ABC1D23)")
    return plate


async def _visible(r: Res, who: Principal, watchlist_id: UUID) -> dict[str, Any]:
    async with r.pool.acquire() as conn:
        found = await watchlists.get_watchlist(conn, watchlist_id, who.city_list())
    if found is None:
        raise HTTPException(404, "watchlist not found")
    return found


@router.get("/api/watchlists")
async def list_watchlists(
    r: Res,
    who: Annotated[Principal, Depends(requires("watchlists:read"))],
    cidade_id: UUID | None = None,
) -> list[WatchlistOut]:
    async with r.pool.acquire() as conn:
        rows = await watchlists.list_watchlists(conn, who.city_list(), cidade_id)
    return [WatchlistOut(**row) for row in rows]


@router.post("/api/watchlists", status_code=201, responses=NOT_FOUND)
async def create_watchlist(
    body: WatchlistIn, r: Res, who: Annotated[Principal, Depends(requires("watchlists:admin"))]
) -> WatchlistOut:
    async with r.pool.acquire() as conn:
        if await cities.get_city(conn, body.cidade_id, who.city_list()) is None:
            raise HTTPException(404, "city not found")
        try:
            watchlist_id = await watchlists.create_watchlist(
                conn, body.cidade_id, body.name, who.user_id
            )
        except asyncpg.UniqueViolationError:
            raise HTTPException(
                409, "name: the city already has a watchlist of that name"
            ) from None
        except asyncpg.ForeignKeyViolationError:  # the city vanished meanwhile
            raise HTTPException(404, "city not found") from None
        await audit.record(
            conn,
            who.user_id,
            "watchlist.create",
            {"watchlist": str(watchlist_id), "name": body.name},
        )
        row = await watchlists.get_watchlist(conn, watchlist_id, None)
    assert row is not None
    return WatchlistOut(**row)


@router.get("/api/watchlists/{watchlist_id}", responses=NOT_FOUND)
async def get_watchlist(
    watchlist_id: UUID, r: Res, who: Annotated[Principal, Depends(requires("watchlists:read"))]
) -> WatchlistView:
    found = await _visible(r, who, watchlist_id)
    async with r.pool.acquire() as conn:
        entries = await watchlists.list_entries(conn, watchlist_id)
    return WatchlistView(**found, plates=[EntryOut(**e) for e in entries])


@router.delete("/api/watchlists/{watchlist_id}", status_code=204, responses=NOT_FOUND)
async def delete_watchlist(
    watchlist_id: UUID, r: Res, who: Annotated[Principal, Depends(requires("watchlists:admin"))]
) -> None:
    async with r.pool.acquire() as conn:
        if await watchlists.delete_watchlist(conn, watchlist_id, who.city_list()) is None:
            raise HTTPException(404, "watchlist not found")
        await audit.record(conn, who.user_id, "watchlist.delete", {"watchlist": str(watchlist_id)})


@router.put("/api/watchlists/{watchlist_id}/plates", status_code=201, responses=NOT_FOUND)
async def put_plate(
    watchlist_id: UUID,
    body: EntryIn,
    r: Res,
    who: Annotated[Principal, Depends(requires("watchlists:admin"))],
) -> EntryOut:
    """Add a plate to the list, or change its reason."""
    plate = _plate(body.plate)
    found = await _visible(r, who, watchlist_id)
    async with r.pool.acquire() as conn:
        try:
            entry = await watchlists.put_entry(
                conn, watchlist_id, found["cidade_id"], plate, body.reason
            )
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        except asyncpg.ForeignKeyViolationError:  # the list was deleted meanwhile
            raise HTTPException(404, "watchlist not found") from None
        await audit.record(
            conn, who.user_id, "watchlist.add", {"watchlist": str(watchlist_id), "plate": plate}
        )
    return EntryOut(**entry)


@router.delete(
    "/api/watchlists/{watchlist_id}/plates/{plate}", status_code=204, responses=NOT_FOUND
)
async def delete_plate(
    watchlist_id: UUID,
    plate: str,
    r: Res,
    who: Annotated[Principal, Depends(requires("watchlists:admin"))],
) -> None:
    canonical = _plate(plate)
    found = await _visible(r, who, watchlist_id)
    async with r.pool.acquire() as conn:
        if not await watchlists.remove_entry(
            conn,
            watchlist_id,
            found["cidade_id"],
            canonical,
        ):
            raise HTTPException(404, "plate not on this watchlist")
        await audit.record(
            conn,
            who.user_id,
            "watchlist.remove",
            {"watchlist": str(watchlist_id), "plate": canonical},
        )


@router.get("/api/alerts", tags=["alerts"])
async def list_alerts(
    r: Res,
    who: Annotated[Principal, Depends(requires("alerts:read"))],
    cidade_id: UUID | None = None,
    camera_id: UUID | None = None,
    open_only: bool = Query(False, description="Only alerts nobody has acknowledged."),
    before: str | None = None,
    limit: Annotated[int, Query(ge=1, le=alerts.MAX_PAGE)] = 50,
) -> AlertPage:
    """Alerts in the caller's cities, newest first."""
    async with r.pool.acquire() as conn:
        rows = await alerts.list_alerts(
            conn, who.city_list(), city_id=cidade_id, camera_id=camera_id,
            open_only=open_only, before=decode_cursor(before), limit=limit,
        )  # fmt: skip
    return AlertPage(
        items=[AlertOut(**row) for row in rows], next=next_cursor(rows, limit, "detected_at")
    )


@router.post("/api/alerts/{alert_id}/acknowledge", tags=["alerts"], responses=NOT_FOUND)
async def acknowledge_alert(
    alert_id: UUID, r: Res, who: Annotated[Principal, Depends(requires("alerts:read"))]
) -> AlertOut:
    async with r.pool.acquire() as conn:
        if not await alerts.acknowledge(conn, alert_id, who.user_id, who.city_list()):
            raise HTTPException(404, "alert not found")
        row = await alerts.get_alert(conn, alert_id, who.city_list())
    assert row is not None
    return AlertOut(**row)
