"""Users, password hashes (argon2) and signed session tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
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


async def ensure_user(conn: asyncpg.Connection, email: str, password: str) -> UUID:
    """The user with this e-mail, created with this password if missing. Safe to race."""
    await conn.execute(
        "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)"
        " ON CONFLICT (email) DO NOTHING",
        uuid.uuid4(), email.lower(), _hasher.hash(password),
    )  # fmt: skip
    user_id: UUID = await conn.fetchval("SELECT id FROM users WHERE email = $1", email.lower())
    return user_id


async def authenticate(conn: asyncpg.Connection, email: str, password: str) -> UUID | None:
    """The active user's id if the password matches, else None. Slow on purpose (argon2)."""
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
    return user_id


def issue_token(user_id: UUID, secret: str, now_s: float | None = None) -> str:
    """A signed, expiring session token: ``<user>.<expiry>.<hmac>``."""
    expiry = int((now_s if now_s is not None else time.time()) + SESSION_TTL_S)
    body = f"{user_id}.{expiry}"
    return f"{body}.{_sign(body, secret)}"


def verify_token(token: str, secret: str, now_s: float | None = None) -> UUID | None:
    """The user id of a valid, unexpired token, else None."""
    try:
        user, expiry, sig = token.split(".")
        body = f"{user}.{expiry}"
        if not hmac.compare_digest(sig, _sign(body, secret)):
            return None
        if int(expiry) < (now_s if now_s is not None else time.time()):
            return None
        return UUID(user)
    except ValueError:
        return None


def _sign(body: str, secret: str) -> str:
    mac = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")
