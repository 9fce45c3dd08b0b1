"""Plate reads (the seed's ``lpr_events``): SQL functions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
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
