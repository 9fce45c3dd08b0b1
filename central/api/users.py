"""User and role administration (``users:admin``), audited.

No privilege escalation: an administrator scoped to some cities manages only users confined to
those cities, grants only those cities, and grants only roles whose permissions they hold
themselves. Roles are global, so only a superuser (``"*"``) edits them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from central import audit, roles, users
from central.api.auth import requires
from central.api.fields import Text
from central.api.resources import NOT_FOUND, Res
from central.users import Principal

router = APIRouter(tags=["users"])
MIN_PASSWORD = 12
RoleName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{1,49}$")]
# Deliverability is the administrator's business; the shape is checked here.
Email = Annotated[
    str, Field(max_length=255, pattern=r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f]+$")
]


class UserIn(BaseModel):
    email: Email
    password: str = Field(min_length=MIN_PASSWORD, max_length=200)
    roles: list[RoleName] = Field(default_factory=list, max_length=20)
    cidade_ids: list[UUID] = Field(default_factory=list, max_length=1000)


class UserPatch(BaseModel):
    """Only the fields given change."""

    password: str | None = Field(None, min_length=MIN_PASSWORD, max_length=200)
    roles: list[RoleName] | None = Field(None, max_length=20)
    cidade_ids: list[UUID] | None = Field(None, max_length=1000)
    is_active: bool | None = None


class UserOut(BaseModel):
    id: UUID
    email: str
    is_active: bool
    created_at: datetime | None
    roles: list[str]
    cidade_ids: list[UUID]


class RoleIn(BaseModel):
    name: RoleName
    permissions: list[Text] = Field(max_length=50)


class RolePatch(BaseModel):
    permissions: list[Text] = Field(max_length=50)


class RoleOut(BaseModel):
    id: UUID
    name: str
    permissions: list[str]


def _check_permissions(permissions: list[str]) -> None:
    unknown = sorted(set(permissions) - roles.PERMISSIONS - {"*"})
    if unknown:
        raise HTTPException(
            422, f"permissions: unknown {unknown}; known {sorted(roles.PERMISSIONS)}"
        )


async def _grantable(
    conn: asyncpg.Connection, who: Principal, names: list[str] | None, cities: list[UUID] | None
) -> list[UUID] | None:
    """Role ids for ``names`` after the no-escalation checks (None when not changing roles)."""
    if cities is not None and who.cities is not None:
        outside = [c for c in cities if c not in who.cities]
        if outside:
            raise HTTPException(404, f"city {outside[0]} not found")
    if cities:
        found = {
            r["id"] for r in await conn.fetch("SELECT id FROM cidades WHERE id = ANY($1)", cities)
        }
        missing = [c for c in cities if c not in found]
        if missing:
            raise HTTPException(404, f"city {missing[0]} not found")
    if names is None:
        return None
    found_roles = await roles.roles_by_name(conn, sorted(set(names)))
    missing_roles = sorted(set(names) - {r["name"] for r in found_roles})
    if missing_roles:
        raise HTTPException(422, f"roles: no role named {missing_roles[0]!r}")
    for role in found_roles:
        if not all(who.can(p) for p in role["permissions"]) or (
            "*" in role["permissions"] and "*" not in who.permissions
        ):
            raise HTTPException(403, f"roles: {role['name']!r} has permissions you do not hold")
    return [r["id"] for r in found_roles]


async def _visible_user(conn: asyncpg.Connection, who: Principal, user_id: UUID) -> dict[str, Any]:
    found = await users.get_user(conn, user_id, who.city_list())
    if found is None:
        raise HTTPException(404, "user not found")
    return found


@router.get("/api/users")
async def list_users(
    r: Res, who: Annotated[Principal, Depends(requires("users:admin"))]
) -> list[UserOut]:
    """Users the caller may manage."""
    async with r.pool.acquire() as conn:
        return [UserOut(**u) for u in await users.list_users(conn, who.city_list())]


@router.post("/api/users", status_code=201, responses=NOT_FOUND)
async def create_user(
    body: UserIn, r: Res, who: Annotated[Principal, Depends(requires("users:admin"))]
) -> UserOut:
    async with r.pool.acquire() as conn, conn.transaction():
        role_ids = await _grantable(conn, who, body.roles, body.cidade_ids)
        try:
            user_id = await users.create_user(conn, body.email, body.password)
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, "email: a user with this e-mail exists") from None
        await users.set_roles(conn, user_id, role_ids or [])
        await users.set_cities(conn, user_id, body.cidade_ids)
        details = {"user": str(user_id), "email": body.email.lower(), "roles": sorted(body.roles),
                   "cities": [str(c) for c in body.cidade_ids]}  # fmt: skip
        await audit.record(conn, who.user_id, "user.create", details)
        created = await users.get_user(conn, user_id, None)
    assert created is not None
    return UserOut(**created)


@router.get("/api/users/{user_id}", responses=NOT_FOUND)
async def get_user(
    user_id: UUID, r: Res, who: Annotated[Principal, Depends(requires("users:admin"))]
) -> UserOut:
    async with r.pool.acquire() as conn:
        return UserOut(**await _visible_user(conn, who, user_id))


@router.patch("/api/users/{user_id}", responses=NOT_FOUND)
async def update_user(
    user_id: UUID,
    body: UserPatch,
    r: Res,
    who: Annotated[Principal, Depends(requires("users:admin"))],
) -> UserOut:
    if user_id == who.user_id and (body.is_active is False or body.roles is not None):
        raise HTTPException(409, "you cannot deactivate yourself or change your own roles")
    async with r.pool.acquire() as conn, conn.transaction():
        await _visible_user(conn, who, user_id)
        role_ids = await _grantable(conn, who, body.roles, body.cidade_ids)
        if role_ids is not None:
            await users.set_roles(conn, user_id, role_ids)
        if body.cidade_ids is not None:
            await users.set_cities(conn, user_id, body.cidade_ids)
        if body.is_active is not None:
            await users.set_active(conn, user_id, body.is_active)
        if body.password is not None:
            await users.set_password(conn, user_id, body.password)
        changed = body.model_dump(exclude_none=True, exclude={"password"}, mode="json")
        if body.password is not None:
            changed["password"] = "changed"  # noqa: S105 - the audit says so, never the value
        await audit.record(conn, who.user_id, "user.update", {"user": str(user_id), **changed})
        updated = await users.get_user(conn, user_id, None)
    assert updated is not None
    return UserOut(**updated)


@router.get("/api/roles", tags=["users"])
async def list_roles(
    r: Res, who: Annotated[Principal, Depends(requires("users:admin"))]
) -> list[RoleOut]:
    async with r.pool.acquire() as conn:
        return [RoleOut(**role) for role in await roles.list_roles(conn)]


def _superuser(who: Principal) -> None:
    if "*" not in who.permissions:
        raise HTTPException(403, "roles apply to every city: only a superuser edits them")


@router.post("/api/roles", status_code=201, tags=["users"])
async def create_role(
    body: RoleIn, r: Res, who: Annotated[Principal, Depends(requires("users:admin"))]
) -> RoleOut:
    _superuser(who)
    _check_permissions(body.permissions)
    async with r.pool.acquire() as conn, conn.transaction():
        try:
            role_id = await roles.create_role(conn, body.name, body.permissions)
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, "name: a role with this name exists") from None
        await audit.record(
            conn, who.user_id, "role.create", {"role": body.name, "permissions": body.permissions}
        )
    return RoleOut(id=role_id, name=body.name, permissions=sorted(set(body.permissions)))


@router.put("/api/roles/{role_id}", tags=["users"], responses=NOT_FOUND)
async def update_role(
    role_id: UUID,
    body: RolePatch,
    r: Res,
    who: Annotated[Principal, Depends(requires("users:admin"))],
) -> RoleOut:
    _superuser(who)
    _check_permissions(body.permissions)
    async with r.pool.acquire() as conn, conn.transaction():
        current = {role["id"]: role for role in await roles.list_roles(conn)}.get(role_id)
        if current is None:
            raise HTTPException(404, "role not found")
        if current["name"] in roles.BUILT_IN:
            raise HTTPException(409, f"{current['name']!r} is built in; create a new role")
        await roles.update_role(conn, role_id, body.permissions)
        await audit.record(
            conn, who.user_id, "role.update",
            {"role": current["name"], "permissions": body.permissions},
        )  # fmt: skip
    return RoleOut(id=role_id, name=current["name"], permissions=sorted(set(body.permissions)))
