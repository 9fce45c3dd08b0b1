"""Versioned commands to agents (watchlists, config hints): delivery state and the pusher.

A versioned command carries the whole of some state (a city's watchlists, an agent's config
hint) with a version central bumps on every change, so the agent applies only versions newer
than the one it holds and a lost, repeated or reordered command cannot leave it wrong. Central
keeps, per agent and kind, the newest version it was sent (``agent_commands_sent``); the
worker's pusher sends every active agent whose current version is newer. Publish (confirmed)
first, record second: a crash in between sends the same version again, which the agent ignores.

A kind is a :class:`VersionedCommand`: its message type, the SQL of an agent's current version
and how to build the command for one agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import asyncpg

from shared.messages import ConfigHint, UploadRequest, WatchlistUpdate

log = logging.getLogger(__name__)

Command = UploadRequest | WatchlistUpdate | ConfigHint
Versioned = WatchlistUpdate | ConfigHint
# Builds one agent's command from its due row (agent_id, cidade_id, version), reading the state
# and its version together (the version sent may be newer than the row's); ``cache`` lives for
# one round, so agents of one city can share what was read for the first.
Build = Callable[[asyncpg.Pool, dict[str, Any], dict[Any, Any]], Awaitable[Versioned]]


class Publisher(Protocol):
    async def publish(self, command: Command) -> None: ...


@dataclass(frozen=True)
class VersionedCommand:
    kind: str  # the message type; the key of agent_commands_sent
    current: str  # SQL: the agent's current version (agents are ``a``)
    build: Build
    joins: str = ""  # SQL joined to ``agents a`` for ``current``


async def agents_behind(
    conn: asyncpg.Connection, command: VersionedCommand
) -> list[dict[str, Any]]:
    """Active agents whose current version of ``command`` is newer than the one sent."""
    rows = await conn.fetch(
        f"SELECT a.id AS agent_id, a.cidade_id, {command.current} AS version"  # noqa: S608 - SQL of the VersionedCommand constants
        f" FROM agents a {command.joins}"
        " LEFT JOIN agent_commands_sent s ON s.agent_id = a.id AND s.kind = $1"
        " WHERE a.is_active AND a.revoked_at IS NULL"
        f" AND (s.version IS NULL OR s.version < {command.current})"
        " ORDER BY a.cidade_id, a.id",
        command.kind,
    )
    return [dict(r) for r in rows]


async def sent_version(conn: asyncpg.Connection, agent_id: UUID, kind: str) -> int | None:
    """The newest version of ``kind`` the agent was sent, None if none."""
    version: int | None = await conn.fetchval(
        "SELECT version FROM agent_commands_sent WHERE agent_id = $1 AND kind = $2",
        agent_id, kind,
    )  # fmt: skip
    return version


async def mark_sent(conn: asyncpg.Connection, agent_id: UUID, kind: str, version: int) -> None:
    await conn.execute(
        "INSERT INTO agent_commands_sent (agent_id, kind, version) VALUES ($1, $2, $3)"
        " ON CONFLICT (agent_id, kind) DO UPDATE SET version = greatest("
        "agent_commands_sent.version, EXCLUDED.version), sent_at = now()",
        agent_id, kind, version,
    )  # fmt: skip


async def push_due(
    pool: asyncpg.Pool, publisher: Publisher, commands: Sequence[VersionedCommand]
) -> int:
    """Send every agent that is behind on any of ``commands``; returns the commands sent."""
    sent = 0
    for command in commands:
        async with pool.acquire() as conn:
            due = await agents_behind(conn, command)
        cache: dict[Any, Any] = {}
        for row in due:
            message = await command.build(pool, row, cache)
            await publisher.publish(message)
            async with pool.acquire() as conn:
                await mark_sent(conn, row["agent_id"], command.kind, message.version)
            sent += 1
            log.info(
                "commands: %s version %d sent to agent %s",
                command.kind, message.version, row["agent_id"],
            )  # fmt: skip
    return sent


async def run_pusher(
    pool: asyncpg.Pool,
    publisher: Publisher,
    stop: asyncio.Event,
    commands: Sequence[VersionedCommand],
    interval_s: float = 5.0,
) -> None:
    """Push changed commands every ``interval_s`` until ``stop``; failures are retried."""
    while not stop.is_set():
        try:
            await push_due(pool, publisher, commands)
        except Exception as exc:  # broker or database away: the next round retries
            log.warning("commands: push failed (%r); retrying in %.0f s", exc, interval_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
