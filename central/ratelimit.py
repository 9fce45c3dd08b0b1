"""Login rate limiting in Redis: failed attempts per e-mail and per client address, in a window.

Redis holds only these counters: if it restarts empty the limits start over, and if it is down
logins are not blocked (availability over a lock-out that Redis cannot enforce).
"""

from __future__ import annotations

import hashlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

WINDOW_S = 15 * 60
MAX_FAILURES_PER_EMAIL = 10
MAX_FAILURES_PER_ADDRESS = 50


def _keys(email: str, address: str) -> tuple[str, str]:
    # Hash the e-mail: counters must not become a list of who tried to log in.
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    return f"gtvision:login-fail:email:{digest}", f"gtvision:login-fail:addr:{address}"


async def blocked(redis: aioredis.Redis, email: str, address: str) -> int | None:
    """Seconds until the caller may try again, or None if not blocked."""
    by_email, by_addr = _keys(email, address)
    try:
        counts = await redis.mget([by_email, by_addr])
        if int(counts[0] or 0) >= MAX_FAILURES_PER_EMAIL:
            return max(int(await redis.ttl(by_email)), 1)
        if int(counts[1] or 0) >= MAX_FAILURES_PER_ADDRESS:
            return max(int(await redis.ttl(by_addr)), 1)
    except (RedisError, OSError) as exc:
        log.warning("login rate limit unavailable (%r): not enforced", exc)
    return None


async def record_failure(redis: aioredis.Redis, email: str, address: str) -> None:
    try:
        async with redis.pipeline(transaction=True) as pipe:
            for key in _keys(email, address):
                pipe.incr(key)
                pipe.expire(key, WINDOW_S, nx=True)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("login rate limit unavailable (%r): failure not counted", exc)


async def record_success(redis: aioredis.Redis, email: str, address: str) -> None:
    try:
        await redis.delete(_keys(email, address)[0])
    except (RedisError, OSError) as exc:
        log.warning("login rate limit unavailable (%r)", exc)
