"""Agents (one per city's edge box) and their API tokens: SQL functions."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from uuid import UUID

import asyncpg


@dataclass(frozen=True)
class Agent:
    id: UUID
    cidade_id: UUID
    nome: str


def token_digest(token: str) -> str:
    # Tokens are 256 random bits, so a plain SHA-256 (not a slow password hash) is enough.
    return hashlib.sha256(token.encode()).hexdigest()


async def create_agent(
    conn: asyncpg.Connection, cidade_id: UUID, nome: str, token: str | None = None
) -> tuple[UUID, str]:
    """Insert an agent; returns its id and its API token (shown once, stored only hashed)."""
    agent_id = uuid.uuid4()
    token = token or secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO agents (id, cidade_id, nome, token_sha256) VALUES ($1, $2, $3, $4)",
        agent_id, cidade_id, nome, token_digest(token),
    )  # fmt: skip
    return agent_id, token


async def agent_by_token(conn: asyncpg.Connection, token: str) -> Agent | None:
    """The active agent holding this token, or None."""
    row = await conn.fetchrow(
        "SELECT id, cidade_id, nome FROM agents WHERE token_sha256 = $1 AND is_active",
        token_digest(token),
    )
    return None if row is None else Agent(row["id"], row["cidade_id"], row["nome"])


async def agent_city(conn: asyncpg.Connection, agent_id: UUID) -> UUID | None:
    """The city an active agent belongs to, or None if the agent is unknown or revoked."""
    city: UUID | None = await conn.fetchval(
        "SELECT cidade_id FROM agents WHERE id = $1 AND is_active", agent_id
    )
    return city


async def rotate_token(conn: asyncpg.Connection, agent_id: UUID, token: str | None = None) -> str:
    """Give the agent a new (or the given) token; the old one stops working at once."""
    token = token or secrets.token_urlsafe(32)
    await conn.execute(
        "UPDATE agents SET token_sha256 = $2 WHERE id = $1", agent_id, token_digest(token)
    )
    return token
