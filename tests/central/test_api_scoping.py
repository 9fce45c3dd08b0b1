"""Every query is scoped to the caller's cities: another city's resource answers exactly like a
missing one (404), and permissions come from roles."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from central import agents, cameras, cities, users
from tests.central_fixtures import CentralProcess

pytestmark = pytest.mark.timeout(90)
PASSWORD = "uma senha longa o bastante"


async def world(pool: asyncpg.Pool) -> dict[str, Any]:
    """Two cities, each with an agent and a camera; users scoped to city A."""
    async with pool.acquire() as conn:
        a = await cities.create_city(conn, "Araraquara", "SP", 15)
        b = await cities.create_city(conn, "Botucatu", "SP", 30)
        agent_a, _ = await agents.create_agent(conn, a, "agente-a")
        agent_b, _ = await agents.create_agent(conn, b, "agente-b")
        cam_a = await cameras.create_camera(conn, a, "cam-a", "rtsp://10.0.0.1/a", agent_a)
        cam_b = await cameras.create_camera(conn, b, "cam-b", "rtsp://10.0.0.2/b", agent_b)
        out: dict[str, Any] = {"a": a, "b": b, "cam_a": cam_a, "cam_b": cam_b}
        for role in ("operador", "instalador"):
            user = await users.create_user(conn, f"{role}@a.example", PASSWORD)
            await users.assign_role(conn, user, role)
            await users.grant_city(conn, user, a)
            out[role] = user
        await users.ensure_admin(conn, "admin@example.com", PASSWORD)
    return out


async def test_city_a_user_sees_nothing_of_city_b(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    w = await world(db_pool)
    op = await central_api.login("operador@a.example", PASSWORD)
    get = central_api.http.get

    listed = (await get("/api/cities", headers=op)).json()
    assert [c["id"] for c in listed] == [str(w["a"])]
    assert [c["id"] for c in (await get("/api/cameras", headers=op)).json()] == [str(w["cam_a"])]
    assert {a["cidade_id"] for a in (await get("/api/agents", headers=op)).json()} == {str(w["a"])}

    for other, missing in (
        (f"/api/cities/{w['b']}", f"/api/cities/{uuid.uuid4()}"),
        (f"/api/cameras/{w['cam_b']}", f"/api/cameras/{uuid.uuid4()}"),
        (f"/api/cameras/{w['cam_b']}/segments", f"/api/cameras/{uuid.uuid4()}/segments"),
        (f"/api/cameras/{w['cam_b']}/streams", f"/api/cameras/{uuid.uuid4()}/streams"),
        (f"/api/cameras/{w['cam_b']}/recordings", f"/api/cameras/{uuid.uuid4()}/recordings"),
    ):
        r_other, r_missing = await get(other, headers=op), await get(missing, headers=op)
        assert r_other.status_code == r_missing.status_code == 404
        assert r_other.json() == r_missing.json(), "a city-B resource must look missing"
    assert (await get(f"/api/cameras/{w['cam_a']}", headers=op)).status_code == 200
    for own in ("streams", "recordings"):
        resp = await get(f"/api/cameras/{w['cam_a']}/{own}", headers=op)
        assert resp.status_code == 200 and resp.json() == [], resp.text

    admin = await central_api.login("admin@example.com", PASSWORD)
    assert len((await get("/api/cities", headers=admin)).json()) == 2
    assert (await get(f"/api/cameras/{w['cam_b']}", headers=admin)).status_code == 200


async def test_permissions_come_from_roles(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    w = await world(db_pool)
    op = await central_api.login("operador@a.example", PASSWORD)
    inst = await central_api.login("instalador@a.example", PASSWORD)
    post = central_api.http.post
    city = {"nome": "Nova", "estado": "SP", "plano_retencao_dias": 7}
    assert (await post("/api/cities", json=city, headers=op)).status_code == 403
    token_b = {"cidade_id": str(w["b"]), "nome": "x"}
    assert (await post("/api/agents/enrolment-tokens", json=token_b, headers=op)).status_code == 403
    # An installer of city A may enrol agents there, and city B looks missing.
    assert (
        await post("/api/agents/enrolment-tokens", json=token_b, headers=inst)
    ).status_code == 404
    token_a = {"cidade_id": str(w["a"]), "nome": "x"}
    assert (
        await post("/api/agents/enrolment-tokens", json=token_a, headers=inst)
    ).status_code == 201
    cam_b = {"cidade_id": str(w["b"]), "nome": "c", "url_rtsp": "rtsp://10.1.1.1/x"}
    assert (await post("/api/cameras", json=cam_b, headers=inst)).status_code == 404
    cam_a = {"cidade_id": str(w["a"]), "nome": "c", "url_rtsp": "rtsp://10.1.1.1/x"}
    created = await post("/api/cameras", json=cam_a, headers=inst)
    assert created.status_code == 201 and created.json()["cidade_id"] == str(w["a"])


async def test_bad_input_names_the_field(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    await world(db_pool)
    admin = await central_api.login("admin@example.com", PASSWORD)
    post = central_api.http.post
    resp = await post(
        "/api/cities", json={"nome": "X", "estado": "SP", "plano_retencao_dias": 10}, headers=admin
    )
    assert resp.status_code == 422 and "plano_retencao_dias" in resp.text
    resp = await post(
        "/api/cities", json={"nome": "X", "estado": "sp", "plano_retencao_dias": 7}, headers=admin
    )
    assert resp.status_code == 422 and "estado" in resp.text
    resp = await central_api.http.get("/api/cameras/not-a-uuid", headers=admin)
    assert resp.status_code == 422 and "camera_id" in resp.text
    resp = await central_api.http.get(
        f"/api/cameras/{uuid.uuid4()}/segments", params={"limit": 100000}, headers=admin
    )
    assert resp.status_code == 422 and "limit" in resp.text


async def test_deactivated_user_is_logged_out(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    w = await world(db_pool)
    op = await central_api.login("operador@a.example", PASSWORD)
    async with db_pool.acquire() as conn:
        await conn.execute("UPDATE users SET is_active = FALSE WHERE id = $1", w["operador"])
    assert (await central_api.http.get("/api/cities", headers=op)).status_code == 401
    bad = {"email": "operador@a.example", "password": PASSWORD}
    assert (await central_api.http.post("/api/auth/login", json=bad)).status_code == 401
