"""The API's shared resources (made once in the app's lifespan) and the dependency that reaches
them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Request
from minio import Minio

from central.broker import BrokerAdmin, split_credentials
from central.settings import Settings


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    s3: Minio
    s3_public: Minio  # signs URLs with the endpoint agents and browsers reach
    redis: aioredis.Redis
    broker: BrokerAdmin | None

    def require_broker(self) -> BrokerAdmin:
        if self.broker is None:
            raise HTTPException(503, "agent enrolment needs RABBITMQ_MANAGEMENT_URL")
        return self.broker

    def agent_amqp_base(self) -> str:
        """The broker URL handed to agents, without credentials."""
        if self.settings.agent_amqp_url:
            return self.settings.agent_amqp_url
        plain, _ = split_credentials(self.settings.amqp_url.get_secret_value())
        return plain


def resources(request: Request) -> Resources:
    r: Resources = request.app.state.res
    return r


Res = Annotated[Resources, Depends(resources)]

# Another city's resource answers exactly as a missing one: nothing leaks across cities.
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "Not found, or in a city the caller may not see."}
}
