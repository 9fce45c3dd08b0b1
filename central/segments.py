"""Video segments uploaded by agents: SQL functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from shared.messages import SegmentRecorded

MAX_PAGE = 1000


def ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


async def insert_segments(conn: asyncpg.Connection, messages: list[SegmentRecorded]) -> int:
    """Insert segments; redeliveries of a segment id are ignored. Returns rows inserted."""
    if not messages:
        return 0
    rows = [
        (
            m.segment_id, m.camera_id, m.agent_id, ms_to_dt(m.start_ms),
            ms_to_dt(m.start_ms + m.duration_ms), m.duration_ms, m.codec, m.blob.bucket,
            m.blob.key, m.blob.size_bytes, m.blob.sha256, m.run_id, m.time_source, m.clock_sync,
            m.clock_error_ms, m.shifted_ms,
        )
        for m in messages
    ]  # fmt: skip
    result: str = await conn.execute(
        """
        INSERT INTO segments (id, camera_id, agent_id, start_time, end_time, duration_ms, codec,
                              bucket, object_key, size_bytes, sha256, run_id, time_source,
                              clock_sync, clock_error_ms, shifted_ms)
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::timestamptz[],
                             $5::timestamptz[], $6::int[], $7::text[], $8::text[], $9::text[],
                             $10::bigint[], $11::text[], $12::uuid[], $13::text[], $14::text[],
                             $15::int[], $16::bigint[])
        ON CONFLICT (id) DO NOTHING
        """,
        *[list(col) for col in zip(*rows, strict=True)],
    )
    return int(result.rsplit(" ", 1)[1])


async def list_segments(
    conn: asyncpg.Connection,
    camera_id: UUID,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Segments of a camera overlapping [start, end), oldest first, at most ``limit``."""
    rows = await conn.fetch(
        """
        SELECT id, camera_id, start_time, end_time, duration_ms, codec, bucket, object_key,
               size_bytes, sha256, received_at, run_id, time_source, clock_sync, clock_error_ms,
               shifted_ms
        FROM segments
        WHERE camera_id = $1
          AND ($2::timestamptz IS NULL OR end_time > $2)
          AND ($3::timestamptz IS NULL OR start_time < $3)
        ORDER BY start_time
        LIMIT $4
        """,
        camera_id, start, end, limit,
    )  # fmt: skip
    return [dict(r) for r in rows]


def coverage(
    rows: list[dict[str, Any]], start: datetime, end: datetime, tolerance_ms: int = 500
) -> tuple[list[tuple[datetime, datetime]], list[tuple[datetime, datetime]]]:
    """Recorded intervals and gaps within [start, end), from segments sorted by start.

    Segments closer than ``tolerance_ms`` (rounding, a keyframe's worth) count as continuous.
    """
    tol = timedelta(milliseconds=tolerance_ms)
    covered: list[tuple[datetime, datetime]] = []
    for row in rows:
        s, e = max(row["start_time"], start), min(row["end_time"], end)
        if e <= s:
            continue
        if covered and s <= covered[-1][1] + tol:
            covered[-1] = (covered[-1][0], max(covered[-1][1], e))
        else:
            covered.append((s, e))
    gaps: list[tuple[datetime, datetime]] = []
    cursor = start
    for s, e in covered:
        if s - cursor > tol:
            gaps.append((cursor, s))
        cursor = max(cursor, e)
    if end - cursor > tol:
        gaps.append((cursor, end))
    return covered, gaps
