"""The audit log (LGPD): who searched plates, exported video, or changed users, and when."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg


async def record(
    conn: asyncpg.Connection, user_id: UUID | None, action: str, details: dict[str, Any]
) -> None:
    """Append one entry. Call in the same transaction as the action it records, if any."""
    await conn.execute(
        "INSERT INTO audit_log (user_id, action, details) VALUES ($1, $2, $3)",
        user_id, action, details,
    )  # fmt: skip
