"""Login: argon2 passwords, signed expiring tokens, and rate limiting of failures in Redis."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from central import ratelimit, users
from tests.central_fixtures import CentralProcess

pytestmark = pytest.mark.timeout(120)
PASSWORD = "correct horse battery staple"


async def test_failed_logins_are_limited_per_email(
    central_api: CentralProcess, db_pool: asyncpg.Pool, redis_url: str
) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    async with db_pool.acquire() as conn:
        await users.create_user(conn, email, PASSWORD)
    post = central_api.http.post
    for _ in range(ratelimit.MAX_FAILURES_PER_EMAIL):
        resp = await post("/api/auth/login", json={"email": email, "password": "wrong"})
        assert resp.status_code == 401
    # Now even the right password waits: a guesser cannot tell when it found it.
    resp = await post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert resp.status_code == 429
    assert 0 < int(resp.headers["Retry-After"]) <= ratelimit.WINDOW_S
    # Another account from the same address is not locked out by this one.
    other = f"{uuid.uuid4().hex[:8]}@example.com"
    async with db_pool.acquire() as conn:
        await users.create_user(conn, other, PASSWORD)
    assert (
        await post("/api/auth/login", json={"email": other, "password": PASSWORD})
    ).status_code == 200

    # Redis restarting empty only resets the counters: logins work again.
    redis = aioredis.from_url(redis_url)
    try:
        await redis.flushall()
    finally:
        await redis.aclose()
    assert (
        await post("/api/auth/login", json={"email": email, "password": PASSWORD})
    ).status_code == 200


async def test_redis_down_and_back_keeps_the_api_working(
    central_api: CentralProcess, db_pool: asyncpg.Pool, devstack_services: Any
) -> None:
    """Redis is a cache: while it is down, logins and scoped reads still work (the rate limit is
    not counted, and says so in the log); once it is back, the limit counts again."""
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    async with db_pool.acquire() as conn:
        await users.ensure_admin(conn, email, PASSWORD)
    post = central_api.http.post
    login = {"email": email, "password": PASSWORD}
    devstack_services.stop("redis")
    try:
        resp = await post("/api/auth/login", json=login)
        assert resp.status_code == 200, resp.text
        token = {"Authorization": f"Bearer {resp.json()['token']}"}
        assert (await central_api.http.get("/api/agents", headers=token)).status_code == 200
        assert (await central_api.http.get("/api/cities", headers=token)).status_code == 200
    finally:
        devstack_services.get("redis")
    for _ in range(ratelimit.MAX_FAILURES_PER_EMAIL):
        resp = await post("/api/auth/login", json={"email": email, "password": "wrong"})
        assert resp.status_code == 401
    assert (await post("/api/auth/login", json=login)).status_code == 429


def test_tokens_are_signed_and_expire() -> None:
    user = uuid.uuid4()
    token = users.issue_token(user, "k" * 32, "stamp", now_s=1000.0)
    assert users.verify_token(token, "k" * 32, now_s=1001.0) == (user, "stamp")
    restamped = token.replace(".stamp.", ".other.")
    assert users.verify_token(restamped, "k" * 32, now_s=1001.0) is None
    assert users.verify_token(token, "x" * 32, now_s=1001.0) is None  # another key
    assert users.verify_token(token, "k" * 32, now_s=1000.0 + users.SESSION_TTL_S + 1) is None
    forged = token.replace(str(user), str(uuid.uuid4()))
    assert users.verify_token(forged, "k" * 32, now_s=1001.0) is None
    assert users.verify_token("garbage", "k" * 32) is None
