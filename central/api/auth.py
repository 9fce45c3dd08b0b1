"""Who is calling: admins by session token (with permissions and city scope), agents by their
API token. Login is here too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from central import agents, ratelimit, users
from central.api.fields import Text
from central.api.resources import Res
from central.users import Principal

bearer = HTTPBearer(auto_error=False)
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
router = APIRouter(tags=["auth"])


async def current_principal(r: Res, creds: Creds) -> Principal:
    """The logged-in, active user with permissions and cities, else 401."""
    session = creds and users.verify_token(
        creds.credentials, r.settings.gtvision_secret_key.get_secret_value()
    )
    principal = None
    if session:
        async with r.pool.acquire() as conn:
            principal = await users.load_principal(conn, *session)
    if principal is None:
        raise HTTPException(401, "login required", headers={"WWW-Authenticate": "Bearer"})
    return principal


def requires(permission: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller, if they hold ``permission`` (403 otherwise)."""

    async def check(
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> Principal:
        if not principal.can(permission):
            raise HTTPException(403, f"missing permission {permission}")
        return principal

    return check


async def current_agent(r: Res, creds: Creds) -> agents.Agent:
    """The agent from ``Authorization: Bearer <agent token>``, else 401."""
    agent = None
    if creds is not None:
        async with r.pool.acquire() as conn:
            agent = await agents.agent_by_token(conn, creds.credentials)
    if agent is None:
        raise HTTPException(401, "unknown or revoked agent token")
    return agent


class LoginRequest(BaseModel):
    email: Text = Field(max_length=255)
    password: Text = Field(max_length=1024)


class LoginResponse(BaseModel):
    token: str
    expires_in_s: int


@router.post("/api/auth/login", responses={429: {"description": "Too many failed attempts."}})
async def login(body: LoginRequest, r: Res, request: Request) -> LoginResponse:
    """Exchange e-mail and password for a session token (``Authorization: Bearer ...``).

    Failed attempts are limited per e-mail and per client address (429 with Retry-After).
    """
    address = request.client.host if request.client else "unknown"
    wait_s = await ratelimit.blocked(r.redis, body.email, address)
    if wait_s is not None:
        raise HTTPException(
            429, "too many failed logins; try again later", headers={"Retry-After": str(wait_s)}
        )
    async with r.pool.acquire() as conn:
        user = await users.authenticate(conn, body.email, body.password)
    if user is None:
        await ratelimit.record_failure(r.redis, body.email, address)
        raise HTTPException(401, "wrong e-mail or password")
    await ratelimit.record_success(r.redis, body.email, address)
    user_id, stamp = user
    token = users.issue_token(user_id, r.settings.gtvision_secret_key.get_secret_value(), stamp)
    return LoginResponse(token=token, expires_in_s=users.SESSION_TTL_S)
