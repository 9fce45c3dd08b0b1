"""Plate reads (the seed's ``lpr_events``): SQL functions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from shared.messages import PlateRead


def _naive_utc(ms: int) -> datetime:
    # The seed's detected_at is TIMESTAMP (without time zone): central stores UTC in it.
    return datetime.fromtimestamp(ms / 1000, tz=UTC).replace(tzinfo=None)


async def insert_reads(
    conn: asyncpg.Connection, reads: Sequence[PlateRead], city_of_camera: dict[UUID, UUID]
) -> int:
    """Insert plate reads keyed by ``read_id``; redeliveries are ignored. Returns rows inserted.

    ``city_of_camera`` must hold every read's camera (the ingest's ownership check made it).
    """
    if not reads:
        return 0
    result: str = await conn.execute(
        """
        INSERT INTO lpr_events (id, camera_id, plate, confidence, image_url, detected_at, city_id)
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::varchar[], $4::numeric[], $5::varchar[],
                             $6::timestamp[], $7::uuid[])
        ON CONFLICT (id) DO NOTHING
        """,
        [r.read_id for r in reads],
        [r.camera_id for r in reads],
        [r.plate for r in reads],
        [round(r.confidence, 2) for r in reads],
        [f"{r.crop.bucket}/{r.crop.key}" if r.crop else None for r in reads],
        [_naive_utc(r.seen_ms) for r in reads],
        [city_of_camera[r.camera_id] for r in reads],
    )
    return int(result.rsplit(" ", 1)[1])


async def count_reads(conn: asyncpg.Connection, camera_id: UUID) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM lpr_events WHERE camera_id = $1", camera_id)
    return n


FUZZY_THRESHOLD = 0.5
SEARCH_COLUMNS = (
    "e.id, e.camera_id, c.nome AS camera, e.city_id, e.plate, e.confidence, e.detected_at,"
    " e.image_url"
)


async def search(
    conn: asyncpg.Connection,
    query: str,
    mode: str,
    scope: list[UUID] | None,
    *,
    city_id: UUID | None = None,
    camera_id: UUID | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 50,
    before: tuple[datetime, UUID] | None = None,
) -> list[dict[str, Any]]:
    """Plate reads matching ``query`` newest first, in the caller's cities.

    Modes: ``exact`` (canonical plate), ``prefix`` (starts with), ``fuzzy`` (OCR look-alikes
    such as O/0 and I/1 are the same, or trigram similarity). ``before`` is the keyset cursor
    (detected_at, id) of the last row of the previous page.
    """
    if mode == "exact":
        match, arg = "e.plate = $1", query
    elif mode == "prefix":
        match, arg = "e.plate LIKE $1", query.replace("%", "").replace("_", "") + "%"
    elif mode == "fuzzy":
        match, arg = "(plate_skeleton(e.plate) = plate_skeleton($1) OR e.plate % $1)", query
    else:
        raise ValueError(f"unknown search mode {mode!r}")
    async with conn.transaction():
        if mode == "fuzzy":
            # pg_trgm's default 0.3 matches most 7-character plates sharing two trigrams.
            await conn.execute(f"SET LOCAL pg_trgm.similarity_threshold = {FUZZY_THRESHOLD}")
        rows = await conn.fetch(
            f"SELECT {SEARCH_COLUMNS} FROM lpr_events e JOIN cameras c ON c.id = e.camera_id"  # noqa: S608 - constant fragments; values are bound
            f" WHERE {match}"
            " AND ($2::uuid[] IS NULL OR e.city_id = ANY($2))"
            " AND ($3::uuid IS NULL OR e.city_id = $3)"
            " AND ($4::uuid IS NULL OR e.camera_id = $4)"
            " AND ($5::timestamp IS NULL OR e.detected_at >= $5)"
            " AND ($6::timestamp IS NULL OR e.detected_at < $6)"
            " AND ($7::timestamp IS NULL OR (e.detected_at, e.id) < ($7, $8))"
            " ORDER BY e.detected_at DESC, e.id DESC LIMIT $9",
            arg, scope, city_id, camera_id, _naive(start), _naive(end),
            _naive(before[0]) if before else None, before[1] if before else None, limit,
        )  # fmt: skip
    out = [dict(r) for r in rows]
    for row in out:
        row["detected_at"] = row["detected_at"].replace(tzinfo=UTC)
    return out


def _naive(dt: datetime | None) -> datetime | None:
    """lpr_events.detected_at is TIMESTAMP holding UTC (the seed's type)."""
    if dt is None or dt.tzinfo is None:
        return dt
    return dt.astimezone(UTC).replace(tzinfo=None)
