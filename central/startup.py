"""Waiting for a dependency at start-up: central's long-lived processes (ingest, worker) start
before, or while, PostgreSQL, RabbitMQ or the object store come up, and wait for them instead
of exiting (a supervisor restarting a process in a tight loop only fills the logs).

A dependency that answers "no" (wrong password, refused credentials) is a configuration error
and ends the process at once with its reason; one that does not answer yet (connection refused,
timeout, "starting up", a 5xx) is waited for, with a log line per attempt and the delay doubling
from 1 s to 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiormq.exceptions
import asyncpg
import urllib3.exceptions
from minio.error import ServerError

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0


def not_up_yet(exc: BaseException) -> bool:
    """True for the errors of a dependency that is down or starting, not misconfigured."""
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return False  # the broker refused the credentials
    return isinstance(
        exc,
        OSError  # refused, reset, unreachable; also aiormq's AMQPConnectionError
        | TimeoutError
        | asyncpg.CannotConnectNowError  # "the database system is starting up"
        | asyncpg.TooManyConnectionsError
        | urllib3.exceptions.HTTPError  # the S3 client's connection errors
        | ServerError,  # an S3 server answering 5xx while it starts
    )


async def until_up(
    what: str,
    connect: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    *,
    max_delay_s: float = MAX_DELAY_S,
) -> T | None:
    """``connect()``'s result once ``what`` answers; None if ``stop`` is set first. Errors that
    are not about ``what`` being down (see ``not_up_yet``) propagate."""
    delay = FIRST_DELAY_S
    while not stop.is_set():
        try:
            return await connect()
        except Exception as exc:
            if not not_up_yet(exc):
                raise
            log.warning(
                "%s is not reachable (%s: %s); retrying in %.0f s",
                what, type(exc).__name__, exc, delay,
            )  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, max_delay_s)
    return None
