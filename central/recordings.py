"""Streams and recordings (the seed's RecordingWorker): kept from ingested segments.

A camera source is one ``streams`` row; each run of it (one RTSP session of the agent's
recorder, ``segments.run_id``) is one ``recordings`` row with the same id as the run. The
segment consumer calls ``record_segments`` in the transaction that stores the segments, so a
recording's totals always equal its stored segments. The clip worker calls ``stop_idle`` now
and then, so a run whose camera went quiet does not stay RECORDING (docs/design/clips.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

# A camera's newest run with no segment ending in this window is STOPPED (its agent may be
# offline or the camera dead; a later segment of the same run makes it RECORDING again).
IDLE_STOP_S = 300
# Seed: retention_days is NOT NULL, and a city created outside the API may have no plan. The
# longest plan errs on the side of keeping video.
DEFAULT_RETENTION_DAYS = 30

RECORDING_COLUMNS = (
    "id, stream_id, retention_days, status, started_at, stopped_at, storage_path, file_size_mb,"
    " duration_seconds, camera_id, segments, duration_ms, size_bytes, first_start, last_end"
)


def naive_utc(dt: datetime) -> datetime:
    """The seed's TIMESTAMP columns hold UTC without a zone."""
    return dt.astimezone(UTC).replace(tzinfo=None)


async def ensure_stream(conn: asyncpg.Connection, camera_id: UUID) -> UUID | None:
    """The camera's stream for its current source URL, created if missing (None: no camera).

    Concurrent callers meet on the unique (camera_id, source_url) index: the loser's insert
    does nothing and it reads the winner's row.
    """
    source = await conn.fetchval("SELECT url_rtsp FROM cameras WHERE id = $1", camera_id)
    if source is None:
        return None
    await conn.execute(
        "INSERT INTO streams (id, camera_id, source_url, status) VALUES ($1, $2, $3, 'STOPPED')"
        " ON CONFLICT (camera_id, source_url) DO NOTHING",
        uuid.uuid4(), camera_id, source,
    )  # fmt: skip
    stream_id: UUID = await conn.fetchval(
        "SELECT id FROM streams WHERE camera_id = $1 AND source_url = $2", camera_id, source
    )
    return stream_id


async def record_segments(
    conn: asyncpg.Connection, segment_ids: Sequence[UUID], idle_s: int = IDLE_STOP_S
) -> int:
    """Count stored segments into their run's recording and the camera's stream.

    Idempotent: a segment is counted once (its ``recording_id`` is set as it is counted), so a
    redelivered or repeated segment changes nothing. Segments without a run (older agents) are
    not part of any recording. Atomic (its own transaction, or a savepoint inside the
    caller's); call it in the transaction that inserted the segments. Returns how many
    segments were counted now.
    """
    if not segment_ids:
        return 0
    counted = 0
    async with conn.transaction():
        runs = await conn.fetch(
            """
            WITH counted AS (
                UPDATE segments SET recording_id = run_id
                WHERE id = ANY($1::uuid[]) AND recording_id IS NULL AND run_id IS NOT NULL
                RETURNING run_id, camera_id, start_time, end_time, duration_ms, size_bytes
            )
            SELECT run_id, camera_id, count(*)::int AS n, sum(duration_ms)::bigint AS duration_ms,
                   sum(size_bytes)::bigint AS size_bytes, min(start_time) AS first_start,
                   max(end_time) AS last_end
            FROM counted GROUP BY run_id, camera_id ORDER BY min(start_time)
            """,
            list(segment_ids),
        )
        for run in runs:
            stream_id = await ensure_stream(conn, run["camera_id"])
            if stream_id is None:  # the camera was deleted meanwhile (its segments cascade)
                continue
            await _add_to_recording(conn, run, stream_id)
            await settle(conn, run["camera_id"], idle_s, touched=run["run_id"])
            counted += run["n"]
    return counted


async def _add_to_recording(conn: asyncpg.Connection, run: asyncpg.Record, stream_id: UUID) -> None:
    await conn.execute(
        """
        INSERT INTO recordings (id, stream_id, retention_days, status, started_at, storage_path,
                                file_size_mb, duration_seconds, camera_id, segments,
                                duration_ms, size_bytes, first_start, last_end)
        SELECT $1::uuid, $2::uuid, coalesce(ci.plano_retencao_dias, $9::int), 'RECORDING',
               $7::timestamptz AT TIME ZONE 'UTC',
               'recordings/' || c.cidade_id || '/' || c.id || '/',
               round($6::bigint::numeric / 1048576, 2), $5::bigint / 1000, c.id, $4::int,
               $5::bigint, $6::bigint, $7::timestamptz, $8::timestamptz
        FROM cameras c LEFT JOIN cidades ci ON ci.id = c.cidade_id
        WHERE c.id = $3
        ON CONFLICT (id) DO UPDATE SET
            segments = recordings.segments + excluded.segments,
            duration_ms = recordings.duration_ms + excluded.duration_ms,
            size_bytes = recordings.size_bytes + excluded.size_bytes,
            duration_seconds = (recordings.duration_ms + excluded.duration_ms) / 1000,
            file_size_mb = round((recordings.size_bytes + excluded.size_bytes)::numeric
                                 / 1048576, 2),
            first_start = least(recordings.first_start, excluded.first_start),
            last_end = greatest(recordings.last_end, excluded.last_end),
            started_at = least(recordings.started_at, excluded.started_at)
        """,
        run["run_id"], stream_id, run["camera_id"], run["n"], run["duration_ms"],
        run["size_bytes"], run["first_start"], run["last_end"], DEFAULT_RETENTION_DAYS,
    )  # fmt: skip


async def settle(
    conn: asyncpg.Connection, camera_id: UUID, idle_s: int, touched: UUID | None = None
) -> None:
    """Statuses of a camera's recordings and streams: only its newest run may be RECORDING,
    and only while its footage is recent (``idle_s``). Touches the open recordings and
    ``touched``, not the camera's whole history."""
    await conn.execute(
        """
        WITH newest AS (
            SELECT id FROM recordings WHERE camera_id = $1
            ORDER BY started_at DESC, id DESC LIMIT 1
        ), wanted AS (
            SELECT r.id, (r.id = (SELECT id FROM newest)
                          AND r.last_end > now() - make_interval(secs => $3)) AS open
            FROM recordings r
            WHERE r.camera_id = $1 AND (r.status = 'RECORDING' OR r.id = $2)
        )
        UPDATE recordings r SET
            status = CASE WHEN w.open THEN 'RECORDING' ELSE 'STOPPED' END,
            stopped_at = CASE WHEN w.open THEN NULL ELSE r.last_end AT TIME ZONE 'UTC' END
        FROM wanted w WHERE r.id = w.id
        """,
        camera_id, touched, float(idle_s),
    )  # fmt: skip
    await _settle_streams(conn, [camera_id])


async def _settle_streams(conn: asyncpg.Connection, camera_ids: list[UUID]) -> None:
    """Each stream of these cameras: RECORDING while one of its recordings is, with the span
    of its recordings."""
    await conn.execute(
        """
        UPDATE streams s SET
            status = CASE WHEN agg.open THEN 'RECORDING' ELSE 'STOPPED' END,
            started_at = agg.started_at,
            stopped_at = CASE WHEN agg.open THEN NULL ELSE agg.stopped_at END
        FROM (
            SELECT stream_id, bool_or(status = 'RECORDING') AS open,
                   min(started_at) AS started_at, max(stopped_at) AS stopped_at
            FROM recordings WHERE camera_id = ANY($1::uuid[]) GROUP BY stream_id
        ) agg
        WHERE s.id = agg.stream_id
        """,
        camera_ids,
    )


async def stop_idle(conn: asyncpg.Connection, idle_s: int = IDLE_STOP_S) -> int:
    """STOP the recordings whose newest footage is older than ``idle_s`` (and their streams).
    Idempotent; returns how many were stopped."""
    async with conn.transaction():
        rows = await conn.fetch(
            "UPDATE recordings SET status = 'STOPPED', stopped_at = last_end AT TIME ZONE 'UTC'"
            " WHERE status = 'RECORDING' AND last_end <= now() - make_interval(secs => $1)"
            " RETURNING camera_id",
            float(idle_s),
        )
        cameras = list({r["camera_id"] for r in rows})
        if cameras:
            await _settle_streams(conn, cameras)
    return len(rows)


async def list_recordings(
    conn: asyncpg.Connection, camera_id: UUID, limit: int = 100
) -> list[dict[str, Any]]:
    """A camera's recordings, newest first."""
    rows = await conn.fetch(
        f"SELECT {RECORDING_COLUMNS} FROM recordings"  # noqa: S608 - a constant column list
        " WHERE camera_id = $1 ORDER BY started_at DESC LIMIT $2",
        camera_id, limit,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def list_streams(conn: asyncpg.Connection, camera_id: UUID) -> list[dict[str, Any]]:
    """A camera's streams (one per source URL it has had)."""
    rows = await conn.fetch(
        "SELECT id, camera_id, source_url, status, started_at, stopped_at FROM streams"
        " WHERE camera_id = $1 ORDER BY started_at NULLS LAST",
        camera_id,
    )
    return [dict(r) for r in rows]
