"""Loss events (video an agent will never deliver): SQL functions."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import asyncpg

from shared.messages import LossEvent


def ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


async def insert_loss(conn: asyncpg.Connection, loss: LossEvent, cidade_id: UUID) -> bool:
    """Insert a loss keyed by ``loss_id``; a redelivery is ignored. True if it was new."""
    result: str = await conn.execute(
        """
        INSERT INTO loss_events (id, agent_id, camera_id, cidade_id, start_time, end_time,
                                 segments, size_bytes, reason)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT (id) DO NOTHING
        """,
        loss.loss_id, loss.agent_id, loss.camera_id, cidade_id, ms_to_dt(loss.start_ms),
        ms_to_dt(loss.end_ms), loss.segments, loss.size_bytes, loss.reason,
    )  # fmt: skip
    return result.endswith(" 1")


async def count_losses(conn: asyncpg.Connection, camera_id: UUID) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM loss_events WHERE camera_id = $1", camera_id)
    return n
