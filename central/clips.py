"""Clips (exports of a camera's video between two instants): SQL functions.

States and the worker that moves them: docs/design/clips.md. A clip is PENDING until the clip
worker makes its file (READY) or gives up (FAILED, with a reason). ``keep`` marks evidence:
retention must never delete such a clip.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from central.recordings import naive_utc

MAX_LENGTH = timedelta(minutes=30)
MAX_PAGE = 200

CLIP_COLUMNS = (
    "k.id, k.camera_id, k.recording_id, k.start_time, k.end_time, k.status, k.storage_path,"
    " k.file_size_mb, k.created_at, k.requested_by, k.keep, k.reason, k.gaps, k.segments,"
    " k.duration_ms, k.size_bytes, k.sha256, k.attempts, k.next_check_at,"
    " k.upload_requested_at, k.finished_at, c.cidade_id"
)


def clip_key(city_id: UUID, camera_id: UUID, clip_id: UUID) -> str:
    """The clip's object in the ``clips`` bucket: id-addressed, so a retried upload overwrites."""
    return f"{city_id}/{camera_id}/{clip_id}.mp4"


def _aware(row: dict[str, Any]) -> dict[str, Any]:
    # The seed's TIMESTAMP columns hold UTC without a zone.
    for name in ("start_time", "end_time", "created_at"):
        if row.get(name) is not None:
            row[name] = row[name].replace(tzinfo=UTC)
    return row


async def create_clip(
    conn: asyncpg.Connection,
    camera_id: UUID,
    start: datetime,
    end: datetime,
    requested_by: UUID | None,
    keep: bool = False,
) -> UUID:
    """Insert a PENDING clip of [start, end) (aware datetimes). ``recording_id`` is the run of
    the first segment central already holds in the range, if any (the worker fills it in
    otherwise). Commits nothing itself."""
    clip_id = uuid.uuid4()
    await conn.execute(
        """
        INSERT INTO clips (id, recording_id, camera_id, start_time, end_time, status,
                           requested_by, keep, created_at)
        VALUES ($1, (SELECT recording_id FROM segments WHERE camera_id = $2 AND end_time > $6
                     AND start_time < $7 AND recording_id IS NOT NULL
                     ORDER BY start_time LIMIT 1),
                $2, $3, $4, 'PENDING', $5, $8, now() AT TIME ZONE 'UTC')
        """,
        clip_id, camera_id, naive_utc(start), naive_utc(end), requested_by, start, end, keep,
    )  # fmt: skip
    return clip_id


async def get_clip(
    conn: asyncpg.Connection, clip_id: UUID, scope: list[UUID] | None
) -> dict[str, Any] | None:
    """The clip if its camera's city is in ``scope`` (None: every city), else None."""
    row = await conn.fetchrow(
        f"SELECT {CLIP_COLUMNS} FROM clips k JOIN cameras c ON c.id = k.camera_id"  # noqa: S608
        " WHERE k.id = $1 AND ($2::uuid[] IS NULL OR c.cidade_id = ANY($2))",
        clip_id, scope,
    )  # fmt: skip
    return None if row is None else _aware(dict(row))


async def list_clips(
    conn: asyncpg.Connection, camera_id: UUID, limit: int = 50
) -> list[dict[str, Any]]:
    """A camera's clips, newest first (the caller checks the camera is in scope)."""
    rows = await conn.fetch(
        f"SELECT {CLIP_COLUMNS} FROM clips k JOIN cameras c ON c.id = k.camera_id"  # noqa: S608
        " WHERE k.camera_id = $1 ORDER BY k.created_at DESC, k.id LIMIT $2",
        camera_id, limit,
    )  # fmt: skip
    return [_aware(dict(r)) for r in rows]


async def set_keep(conn: asyncpg.Connection, clip_id: UUID, keep: bool) -> None:
    await conn.execute("UPDATE clips SET keep = $2 WHERE id = $1", clip_id, keep)


async def claim_next(conn: asyncpg.Connection) -> dict[str, Any] | None:
    """Lock the next PENDING clip that is due, skipping clips other workers hold.

    Call inside a transaction and keep it open while working: the row lock is the claim. A
    worker that dies loses its connection, PostgreSQL releases the lock and the clip, still
    PENDING, is due again at once (docs/design/clips.md, "Crash safety").
    """
    row = await conn.fetchrow(
        f"SELECT {CLIP_COLUMNS} FROM clips k JOIN cameras c ON c.id = k.camera_id"  # noqa: S608
        " WHERE k.status = 'PENDING' AND k.next_check_at <= now()"
        " ORDER BY k.next_check_at FOR UPDATE OF k SKIP LOCKED LIMIT 1"
    )
    return None if row is None else _aware(dict(row))


async def wait(
    conn: asyncpg.Connection, clip_id: UUID, recheck_s: float, note: str, requested: bool
) -> None:
    """Leave a clip PENDING, due again in ``recheck_s``; ``requested`` records that the agent
    was asked for the footage just now."""
    await conn.execute(
        "UPDATE clips SET next_check_at = now() + make_interval(secs => $2), reason = $3,"
        " upload_requested_at = CASE WHEN $4 THEN now() ELSE upload_requested_at END"
        " WHERE id = $1",
        clip_id, recheck_s, note[:1000], requested,
    )  # fmt: skip


async def mark_ready(
    conn: asyncpg.Connection,
    clip_id: UUID,
    *,
    recording_id: UUID | None,
    storage_path: str,
    size_bytes: int,
    sha256: str,
    duration_ms: int,
    segments: int,
    gaps: list[dict[str, str]],
    note: str | None,
) -> None:
    await conn.execute(
        """
        UPDATE clips SET status = 'READY', recording_id = coalesce(recording_id, $2),
            storage_path = $3, size_bytes = $4::bigint,
            file_size_mb = round($4::bigint::numeric / 1048576, 2),
            sha256 = $5, duration_ms = $6, segments = $7, gaps = $8, reason = $9,
            finished_at = now()
        WHERE id = $1
        """,
        clip_id, recording_id, storage_path, size_bytes, sha256, duration_ms, segments, gaps,
        note,
    )  # fmt: skip


async def mark_failed(
    conn: asyncpg.Connection, clip_id: UUID, reason: str, gaps: list[dict[str, str]]
) -> None:
    await conn.execute(
        "UPDATE clips SET status = 'FAILED', reason = $2, gaps = $3, finished_at = now()"
        " WHERE id = $1",
        clip_id, reason[:1000], gaps,
    )  # fmt: skip


async def record_error(
    conn: asyncpg.Connection, clip_id: UUID, error: str, retry_s: float, max_attempts: int
) -> bool:
    """Count a failed attempt (an exception while building): retried after ``retry_s``, FAILED
    once ``max_attempts`` are spent. Returns True if the clip is now FAILED."""
    status = await conn.fetchval(
        "UPDATE clips SET attempts = attempts + 1,"
        " status = CASE WHEN attempts + 1 >= $4 THEN 'FAILED' ELSE status END,"
        " finished_at = CASE WHEN attempts + 1 >= $4 THEN now() ELSE finished_at END,"
        " reason = $2, next_check_at = now() + make_interval(secs => $3)"
        " WHERE id = $1 AND status = 'PENDING' RETURNING status",
        clip_id, error[:1000], retry_s, max_attempts,
    )  # fmt: skip
    return bool(status == "FAILED")
