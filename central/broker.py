"""Per-agent RabbitMQ users, through the broker's management HTTP API.

Each agent gets its own user that may only publish its own routing keys (topic permissions) and
read its own command queue; revoking an agent deletes the user, which closes its connections.
"""

from __future__ import annotations

import secrets
from urllib.parse import quote, urlsplit, urlunsplit
from uuid import UUID

import httpx

from shared.topology import (
    AGENT_QUEUE_ARGUMENTS,
    EVENTS_EXCHANGE,
    agent_command_queue,
    agent_permissions,
    agent_user,
)


class BrokerAdminError(RuntimeError):
    """The management API refused or could not be reached; nothing was half-created."""


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """(URL without credentials, (user, password) or None)."""
    parts = urlsplit(url)
    auth = None
    if parts.username:
        auth = (parts.username, parts.password or "")
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")), auth


class BrokerAdmin:
    """A small client of the RabbitMQ management API for agent users."""

    def __init__(self, management_url: str, vhost: str = "/", timeout_s: float = 10.0) -> None:
        base, auth = split_credentials(management_url)
        base = base.rstrip("/")
        self._vhost = quote(vhost, safe="")
        self._client = httpx.AsyncClient(base_url=base, auth=auth, timeout=timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, body: object | None = None) -> httpx.Response:
        try:
            resp = await self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise BrokerAdminError(f"broker management API unreachable: {exc!r}") from None
        if resp.status_code >= 400 and not (method == "DELETE" and resp.status_code == 404):
            raise BrokerAdminError(
                f"broker management API {method} {path}: HTTP {resp.status_code} {resp.text[:200]}"
            )
        return resp

    async def create_agent_user(self, agent_id: UUID, city_id: UUID) -> tuple[str, str]:
        """Create (or reset) the agent's user with its permissions; returns (user, password)."""
        user = agent_user(agent_id)
        password = secrets.token_urlsafe(32)
        perms = agent_permissions(agent_id, city_id)
        try:
            await self._call("PUT", f"/api/users/{user}", {"password": password, "tags": ""})
            await self._call(
                "PUT",
                f"/api/permissions/{self._vhost}/{user}",
                {"configure": perms.configure, "write": perms.write, "read": perms.read},
            )
            await self._call(
                "PUT",
                f"/api/topic-permissions/{self._vhost}/{user}",
                {"exchange": EVENTS_EXCHANGE, "write": perms.topic_write, "read": "^$"},
            )
            # The command queue, declared through the same API with the shared arguments.
            await self._call(
                "PUT",
                f"/api/queues/{self._vhost}/{agent_command_queue(agent_id)}",
                {"durable": True, "auto_delete": False, "arguments": AGENT_QUEUE_ARGUMENTS},
            )
        except BrokerAdminError:
            await self.delete_agent_user(agent_id)
            raise
        return user, password

    async def delete_agent_user(self, agent_id: UUID) -> None:
        """Delete the agent's user (its open connections close). Idempotent."""
        await self._call("DELETE", f"/api/users/{agent_user(agent_id)}")


def agent_amqp_url(base_url: str, user: str, password: str) -> str:
    """The broker URL for an agent: ``base_url`` (no credentials) with the agent's user."""
    parts = urlsplit(base_url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
