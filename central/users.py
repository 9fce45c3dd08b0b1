"""Users, password hashes (argon2) and signed session tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

_hasher = PasswordHasher()
SESSION_TTL_S = 12 * 3600


async def create_user(conn: asyncpg.Connection, email: str, password: str) -> UUID:
    """Insert a user with an argon2 password hash."""
    user_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)",
        user_id, email.lower(), _hasher.hash(password),
    )  # fmt: skip
    return user_id


@dataclass(frozen=True)
class Principal:
    """A logged-in user: permissions from their roles, and the cities they may see."""

    user_id: UUID
    permissions: frozenset[str]
    cities: frozenset[UUID] | None  # None: every city

    def can(self, permission: str) -> bool:
        return "*" in self.permissions or permission in self.permissions

    def sees(self, city_id: UUID) -> bool:
        return self.cities is None or city_id in self.cities

    def city_list(self) -> list[UUID] | None:
        """For SQL: ``cidade_id = ANY($n)`` when not None."""
        return None if self.cities is None else list(self.cities)


async def load_principal(
    conn: asyncpg.Connection, user_id: UUID, stamp: str | None = None
) -> Principal | None:
    """The active user's permissions and cities; None if unknown or deactivated, or if
    ``stamp`` (a session token's) is not their password's: the password changed since."""
    row = await conn.fetchrow(
        """
        SELECT u.is_active, u.password_hash,
               coalesce((SELECT jsonb_agg(p) FROM user_roles ur JOIN roles r ON r.id = ur.role_id,
                         jsonb_array_elements_text(coalesce(r.permissions, '[]')) p
                         WHERE ur.user_id = u.id), '[]') AS permissions,
               coalesce((SELECT array_agg(cidade_id) FROM user_cidades uc
                         WHERE uc.user_id = u.id), '{}') AS cities
        FROM users u WHERE u.id = $1
        """,
        user_id,
    )
    if row is None or not row["is_active"]:
        return None
    if stamp is not None and not hmac.compare_digest(stamp, session_stamp(row["password_hash"])):
        return None
    permissions = frozenset(row["permissions"])
    cities = None if "*" in permissions else frozenset(row["cities"])
    return Principal(user_id, permissions, cities)


async def assign_role(conn: asyncpg.Connection, user_id: UUID, role: str) -> None:
    """Give the user a role by name. Idempotent; LookupError if the role does not exist."""
    done = await conn.fetchval(
        "INSERT INTO user_roles (user_id, role_id) SELECT $1, id FROM roles WHERE name = $2"
        " ON CONFLICT DO NOTHING RETURNING TRUE",
        user_id, role,
    )  # fmt: skip
    if not done and not await conn.fetchval("SELECT 1 FROM roles WHERE name = $1", role):
        raise LookupError(f"no role named {role!r}")


async def grant_city(conn: asyncpg.Connection, user_id: UUID, city_id: UUID) -> None:
    """Let the user see the city's data. Idempotent."""
    await conn.execute(
        "INSERT INTO user_cidades (user_id, cidade_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        user_id, city_id,
    )  # fmt: skip


async def ensure_admin(conn: asyncpg.Connection, email: str, password: str) -> UUID:
    """The administrator (role ``admin``: every permission, every city), created if missing."""
    user_id = await ensure_user(conn, email, password)
    await assign_role(conn, user_id, "admin")
    return user_id


async def ensure_user(conn: asyncpg.Connection, email: str, password: str) -> UUID:
    """The user with this e-mail, created with this password if missing. Safe to race."""
    await conn.execute(
        "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)"
        " ON CONFLICT (email) DO NOTHING",
        uuid.uuid4(), email.lower(), _hasher.hash(password),
    )  # fmt: skip
    user_id: UUID = await conn.fetchval("SELECT id FROM users WHERE email = $1", email.lower())
    return user_id


async def authenticate(
    conn: asyncpg.Connection, email: str, password: str
) -> tuple[UUID, str] | None:
    """The active user's id and session stamp if the password matches, else None. Slow on
    purpose (argon2)."""
    row = await conn.fetchrow(
        "SELECT id, password_hash FROM users WHERE email = $1 AND is_active", email.lower()
    )
    if row is None:
        # Spend the same time as a real check so unknown e-mails are not revealed by timing.
        _hasher.hash(password)
        return None
    try:
        _hasher.verify(row["password_hash"], password)
    except VerificationError:
        return None
    user_id: UUID = row["id"]
    return user_id, session_stamp(row["password_hash"])


def session_stamp(password_hash: str) -> str:
    """What a session token carries of the password it was issued under: a digest of its hash
    (never the hash). Setting a new password changes it, which ends every older session."""
    digest = hashlib.sha256(b"gtvision-session:" + password_hash.encode()).digest()[:9]
    return base64.urlsafe_b64encode(digest).decode()


def issue_token(user_id: UUID, secret: str, stamp: str, now_s: float | None = None) -> str:
    """A signed, expiring session token: ``<user>.<expiry>.<stamp>.<hmac>``."""
    expiry = int((now_s if now_s is not None else time.time()) + SESSION_TTL_S)
    body = f"{user_id}.{expiry}.{stamp}"
    return f"{body}.{_sign(body, secret)}"


def verify_token(token: str, secret: str, now_s: float | None = None) -> tuple[UUID, str] | None:
    """The user id and password stamp of a valid, unexpired token, else None (the stamp is
    checked against the user's password by ``load_principal``)."""
    try:
        user, expiry, stamp, sig = token.split(".")
        body = f"{user}.{expiry}.{stamp}"
        if not hmac.compare_digest(sig, _sign(body, secret)):
            return None
        if int(expiry) < (now_s if now_s is not None else time.time()):
            return None
        return UUID(user), stamp
    except ValueError:
        return None


def _sign(body: str, secret: str) -> str:
    mac = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


# --- administration (users:admin) --------------------------------------------------------------

_USER_COLUMNS = """
    u.id, u.email, coalesce(u.is_active, TRUE) AS is_active, u.created_at,
    coalesce((SELECT array_agg(r.name ORDER BY r.name) FROM user_roles ur
              JOIN roles r ON r.id = ur.role_id WHERE ur.user_id = u.id), '{}') AS roles,
    coalesce((SELECT array_agg(uc.cidade_id ORDER BY uc.cidade_id) FROM user_cidades uc
              WHERE uc.user_id = u.id), '{}') AS cidade_ids,
    coalesce((SELECT bool_or(r.permissions @> '["*"]') FROM user_roles ur
              JOIN roles r ON r.id = ur.role_id WHERE ur.user_id = u.id), FALSE) AS superuser
"""
# A scoped administrator manages only users confined to their cities: no superuser, and no city
# outside the scope (a user with no city yet is manageable by any administrator).
_MANAGEABLE = """
    ($1::uuid[] IS NULL OR (
        NOT coalesce((SELECT bool_or(r.permissions @> '["*"]') FROM user_roles ur
                      JOIN roles r ON r.id = ur.role_id WHERE ur.user_id = u.id), FALSE)
        AND NOT EXISTS (SELECT 1 FROM user_cidades uc
                        WHERE uc.user_id = u.id AND NOT uc.cidade_id = ANY($1))))
"""


async def list_users(conn: asyncpg.Connection, scope: list[UUID] | None) -> list[dict[str, Any]]:
    """Users the administrator with ``scope`` (None: every city) may manage, by e-mail."""
    rows = await conn.fetch(
        f"SELECT {_USER_COLUMNS} FROM users u WHERE {_MANAGEABLE} ORDER BY u.email",  # noqa: S608
        scope,
    )
    return [dict(r) for r in rows]


async def get_user(
    conn: asyncpg.Connection, user_id: UUID, scope: list[UUID] | None
) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users u WHERE {_MANAGEABLE} AND u.id = $2",  # noqa: S608
        scope, user_id,
    )  # fmt: skip
    return None if row is None else dict(row)


async def set_roles(conn: asyncpg.Connection, user_id: UUID, role_ids: list[UUID]) -> None:
    """Replace the user's roles."""
    async with conn.transaction():
        await conn.execute("DELETE FROM user_roles WHERE user_id = $1", user_id)
        await conn.executemany(
            "INSERT INTO user_roles (user_id, role_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            [(user_id, role_id) for role_id in role_ids],
        )


async def set_cities(conn: asyncpg.Connection, user_id: UUID, city_ids: list[UUID]) -> None:
    """Replace the cities the user may see."""
    async with conn.transaction():
        await conn.execute("DELETE FROM user_cidades WHERE user_id = $1", user_id)
        await conn.executemany(
            "INSERT INTO user_cidades (user_id, cidade_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            [(user_id, city_id) for city_id in city_ids],
        )


async def set_active(conn: asyncpg.Connection, user_id: UUID, active: bool) -> None:
    """A deactivated user cannot log in, and their sessions stop working at the next request."""
    await conn.execute("UPDATE users SET is_active = $2 WHERE id = $1", user_id, active)


async def set_password(conn: asyncpg.Connection, user_id: UUID, password: str) -> None:
    await conn.execute(
        "UPDATE users SET password_hash = $2 WHERE id = $1", user_id, _hasher.hash(password)
    )
