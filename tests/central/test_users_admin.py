"""User and role administration: no privilege escalation, city confinement, audited changes,
and a deactivated user locked out at once."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from central import users
from tests.central.test_api_scoping import PASSWORD, world
from tests.central_fixtures import CentralProcess

pytestmark = pytest.mark.timeout(120)


async def test_superuser_manages_roles_and_a_city_manager_manages_only_their_city(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    w = await world(db_pool)
    async with db_pool.acquire() as conn:
        b_user = await users.create_user(conn, "operador@b.example", PASSWORD)
        await users.assign_role(conn, b_user, "operador")
        await users.grant_city(conn, b_user, w["b"])
    http = central_api.http
    admin = await central_api.login("admin@example.com", PASSWORD)

    # Roles: only known permissions; built-in roles are not edited in place.
    bad = await http.post(
        "/api/roles", json={"name": "piloto", "permissions": ["cameras:fly"]}, headers=admin
    )
    assert bad.status_code == 422 and "cameras:fly" in bad.text
    gestor_role = {"name": "gestor", "permissions": ["users:admin", "cameras:read"]}
    made = await http.post("/api/roles", json=gestor_role, headers=admin)
    assert made.status_code == 201, made.text
    roles = {r["name"]: r for r in (await http.get("/api/roles", headers=admin)).json()}
    built_in = await http.put(
        f"/api/roles/{roles['operador']['id']}", json={"permissions": ["*"]}, headers=admin
    )
    assert built_in.status_code == 409

    # A city-A manager, created by the superuser.
    new = {
        "email": "Gestor@A.example", "password": PASSWORD, "roles": ["gestor"],
        "cidade_ids": [str(w["a"])],
    }  # fmt: skip
    created = await http.post("/api/users", json=new, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["email"] == "gestor@a.example"
    assert (await http.post("/api/users", json=new, headers=admin)).status_code == 409
    gestor = await central_api.login("gestor@a.example", PASSWORD)

    listed = {u["email"] for u in (await http.get("/api/users", headers=gestor)).json()}
    assert listed == {"operador@a.example", "instalador@a.example", "gestor@a.example"}
    for other in (b_user, uuid.uuid4()):
        resp = await http.patch(f"/api/users/{other}", json={"is_active": False}, headers=gestor)
        assert resp.status_code == 404, "a city-B user looks missing"
    assert (
        await http.post("/api/roles", json={"name": "outro", "permissions": []}, headers=gestor)
    ).status_code == 403

    def user(email: str, roles: list[str], cities: list[uuid.UUID]) -> dict[str, object]:
        return {
            "email": email, "password": PASSWORD, "roles": roles,
            "cidade_ids": [str(c) for c in cities],
        }  # fmt: skip

    post = http.post
    # No escalation: no city outside the manager's, no role with more than they hold.
    assert (
        await post("/api/users", json=user("x@b.example", [], [w["b"]]), headers=gestor)
    ).status_code == 404
    assert (
        await post("/api/users", json=user("x@a.example", ["admin"], [w["a"]]), headers=gestor)
    ).status_code == 403
    assert (
        await post("/api/users", json=user("x@a.example", ["operador"], [w["a"]]), headers=gestor)
    ).status_code == 403
    assert (
        await post("/api/users", json=user("x@a.example", ["nada"], [w["a"]]), headers=gestor)
    ).status_code == 422
    weak = user("x@a.example", [], [w["a"]]) | {"password": "curta"}
    assert (await post("/api/users", json=weak, headers=gestor)).status_code == 422
    ok = await post(
        "/api/users", json=user("viewer@a.example", ["gestor"], [w["a"]]), headers=gestor
    )
    assert ok.status_code == 201, ok.text
    self_id = created.json()["id"]
    mine = await http.patch(f"/api/users/{self_id}", json={"roles": []}, headers=gestor)
    assert mine.status_code == 409

    # Deactivation locks the user out at once: their session and a new login both fail.
    op = await central_api.login("operador@a.example", PASSWORD)
    assert (await http.get("/api/cameras", headers=op)).status_code == 200
    off = await http.patch(f"/api/users/{w['operador']}", json={"is_active": False}, headers=gestor)
    assert off.status_code == 200 and off.json()["is_active"] is False
    assert (await http.get("/api/cameras", headers=op)).status_code == 401
    login = await http.post(
        "/api/auth/login", json={"email": "operador@a.example", "password": PASSWORD}
    )
    assert login.status_code == 401

    async with db_pool.acquire() as conn:
        logged = await conn.fetch(
            "SELECT action, details FROM audit_log"
            " WHERE action LIKE 'user.%' OR action LIKE 'role.%' ORDER BY id"
        )
    assert [r["action"] for r in logged] == [
        "role.create",
        "user.create",
        "user.create",
        "user.update",
    ]
    assert all(
        "password" not in str(r["details"]) or "changed" in str(r["details"]) for r in logged
    )
    assert PASSWORD not in str([dict(r) for r in logged]), "no password in the audit log"


async def test_a_new_password_ends_the_older_sessions(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    w = await world(db_pool)
    http = central_api.http
    admin = await central_api.login("admin@example.com", PASSWORD)
    op = await central_api.login("operador@a.example", PASSWORD)
    op_other_device = await central_api.login("operador@a.example", PASSWORD)
    assert (await http.get("/api/cameras", headers=op)).status_code == 200
    new_password = "outra-senha-longa-1"
    changed = await http.patch(
        f"/api/users/{w['operador']}", json={"password": new_password}, headers=admin
    )
    assert changed.status_code == 200, changed.text
    for session in (op, op_other_device):
        assert (await http.get("/api/cameras", headers=session)).status_code == 401
    assert (await http.get("/api/cameras", headers=admin)).status_code == 200  # not the admin's
    again = await central_api.login("operador@a.example", new_password)
    assert (await http.get("/api/cameras", headers=again)).status_code == 200
