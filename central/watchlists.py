"""Watchlists: named lists of plates per city, matched by that city's agents. SQL functions.

Every change bumps the city's ``watchlist_versions`` row in the same transaction, so the
plates an agent should hold are identified by (city, version): a newer version replaces an
older one on the agent, and a redelivered old one is ignored.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any
from uuid import UUID

import asyncpg

from central import commands
from shared.messages import MAX_WATCHLIST_PLATES, WatchlistPlate, WatchlistUpdate

log = logging.getLogger(__name__)

# An agent matches against every plate of its city: the whole set travels in one command.
MAX_CITY_PLATES = MAX_WATCHLIST_PLATES

SELECT_LIST = (
    "SELECT w.id, w.cidade_id, w.name, w.created_at, w.created_by,"
    " (SELECT count(*) FROM watchlist_entries e WHERE e.watchlist_id = w.id) AS entries"
    " FROM watchlists w"
)


async def _bump(conn: asyncpg.Connection, city_id: UUID) -> int:
    version: int = await conn.fetchval(
        "INSERT INTO watchlist_versions (cidade_id, version) VALUES ($1, 1)"
        " ON CONFLICT (cidade_id) DO UPDATE SET version = watchlist_versions.version + 1"
        " RETURNING version",
        city_id,
    )
    return version


async def create_watchlist(
    conn: asyncpg.Connection, city_id: UUID, name: str, created_by: UUID | None
) -> UUID:
    """A new empty list; asyncpg.UniqueViolationError if the city has one of that name."""
    watchlist_id = uuid.uuid4()
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO watchlists (id, cidade_id, name, created_by) VALUES ($1, $2, $3, $4)",
            watchlist_id, city_id, name, created_by,
        )  # fmt: skip
        await _bump(conn, city_id)
    return watchlist_id


async def list_watchlists(
    conn: asyncpg.Connection, scope: list[UUID] | None, city_id: UUID | None = None
) -> list[dict[str, Any]]:
    """Lists in ``scope`` (None: all cities), optionally of one city, by city and name."""
    rows = await conn.fetch(
        SELECT_LIST + " WHERE ($1::uuid[] IS NULL OR w.cidade_id = ANY($1))"
        " AND ($2::uuid IS NULL OR w.cidade_id = $2) ORDER BY w.cidade_id, w.name",
        scope, city_id,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def get_watchlist(
    conn: asyncpg.Connection, watchlist_id: UUID, scope: list[UUID] | None
) -> dict[str, Any] | None:
    """The list if it exists and its city is in scope; None otherwise (404 either way)."""
    row = await conn.fetchrow(
        SELECT_LIST + " WHERE w.id = $1 AND ($2::uuid[] IS NULL OR w.cidade_id = ANY($2))",
        watchlist_id, scope,
    )  # fmt: skip
    return None if row is None else dict(row)


async def delete_watchlist(
    conn: asyncpg.Connection, watchlist_id: UUID, scope: list[UUID] | None
) -> UUID | None:
    """Delete the list and its entries; returns its city, or None if not found in scope."""
    async with conn.transaction():
        city_id: UUID | None = await conn.fetchval(
            "DELETE FROM watchlists WHERE id = $1 AND ($2::uuid[] IS NULL OR cidade_id = ANY($2))"
            " RETURNING cidade_id",
            watchlist_id, scope,
        )  # fmt: skip
        if city_id is not None:
            await _bump(conn, city_id)
    return city_id


async def list_entries(conn: asyncpg.Connection, watchlist_id: UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT plate, reason, added_at FROM watchlist_entries WHERE watchlist_id = $1"
        " ORDER BY plate",
        watchlist_id,
    )
    return [dict(r) for r in rows]


async def put_entry(
    conn: asyncpg.Connection, watchlist_id: UUID, city_id: UUID, plate: str, reason: str
) -> dict[str, Any]:
    """Add a canonical plate (or update its reason); returns the entry (plate, reason,
    added_at).

    ValueError when the city's lists would hold more than :data:`MAX_CITY_PLATES` entries."""
    async with conn.transaction():
        # Serialise a city's changes: the count check and the version bump stay consistent.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1::text))", str(city_id))
        row = await conn.fetchrow(
            "INSERT INTO watchlist_entries (watchlist_id, plate, reason) VALUES ($1, $2, $3)"
            " ON CONFLICT (watchlist_id, plate) DO UPDATE SET reason = EXCLUDED.reason"
            " RETURNING plate, reason, added_at, xmax = 0 AS new",
            watchlist_id, plate, reason,
        )  # fmt: skip
        if row["new"] and await _city_plate_count(conn, city_id) > MAX_CITY_PLATES:
            raise ValueError(f"a city's watchlists hold at most {MAX_CITY_PLATES} plates in all")
        await _bump(conn, city_id)
    return {k: row[k] for k in ("plate", "reason", "added_at")}


async def remove_entry(
    conn: asyncpg.Connection, watchlist_id: UUID, city_id: UUID, plate: str
) -> bool:
    async with conn.transaction():
        done = await conn.fetchval(
            "DELETE FROM watchlist_entries WHERE watchlist_id = $1 AND plate = $2 RETURNING TRUE",
            watchlist_id, plate,
        )  # fmt: skip
        if done:
            await _bump(conn, city_id)
    return bool(done)


async def _city_plate_count(conn: asyncpg.Connection, city_id: UUID) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM watchlist_entries e"
        " JOIN watchlists w ON w.id = e.watchlist_id WHERE w.cidade_id = $1",
        city_id,
    )
    return count


async def city_entries(conn: asyncpg.Connection, city_id: UUID) -> tuple[int, list[dict[str, Any]]]:
    """What the city's agents should hold: (version, every entry with its list and reason)."""
    async with conn.transaction(isolation="repeatable_read"):
        version = await conn.fetchval(
            "SELECT version FROM watchlist_versions WHERE cidade_id = $1", city_id
        )
        rows = await conn.fetch(
            "SELECT e.plate, e.watchlist_id, e.reason FROM watchlist_entries e"
            " JOIN watchlists w ON w.id = e.watchlist_id WHERE w.cidade_id = $1"
            " ORDER BY e.plate, e.watchlist_id",
            city_id,
        )
    return int(version or 0), [dict(r) for r in rows]


# --- delivery to agents (central/commands.py's pusher) -------------------------------------


def update_id(city_id: UUID, version: int) -> UUID:
    """The same (city, version) always gives the same id: a resend is recognisable."""
    return uuid.uuid5(city_id, f"watchlist-{version}")


async def _build(pool: asyncpg.Pool, row: dict[str, Any], cache: dict[Any, Any]) -> WatchlistUpdate:
    city = row["cidade_id"]
    if city not in cache:
        async with pool.acquire() as conn:
            cache[city] = await city_entries(conn, city)
    version, entries = cache[city]
    return WatchlistUpdate(
        update_id=update_id(city, version), agent_id=row["agent_id"], city_id=city,
        version=version, plates=[WatchlistPlate(**e) for e in entries],
    )  # fmt: skip


# An agent is behind when its city's lists changed since the version it was sent.
PUSH = commands.VersionedCommand(
    kind="watchlist_update",
    current="v.version",
    joins="JOIN watchlist_versions v ON v.cidade_id = a.cidade_id",
    build=_build,
)


async def push_due(pool: asyncpg.Pool, publisher: commands.Publisher) -> int:
    """Send every agent that is behind its city's current lists; returns updates sent."""
    return await commands.push_due(pool, publisher, [PUSH])
