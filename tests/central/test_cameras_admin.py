"""Editing cities and cameras: validated, scoped to the caller's cities, audited; a camera with
footage cannot be deleted (its objects would be orphaned)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from central import agents
from tests.central.test_api_scoping import PASSWORD, world
from tests.central_fixtures import CentralProcess

pytestmark = pytest.mark.timeout(90)


async def test_cities_and_cameras_are_edited_within_scope(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    w = await world(db_pool)
    async with db_pool.acquire() as conn:
        other_agent_a, _ = await agents.create_agent(conn, w["a"], "agente-a2")
        agent_b = await conn.fetchval("SELECT agent_id FROM cameras WHERE id = $1", w["cam_b"])
        # Footage on camera A: a segment row (its object is not needed for this check).
        start = datetime.now(UTC) - timedelta(hours=1)
        await conn.execute(
            "INSERT INTO segments (id, camera_id, agent_id, start_time, end_time, duration_ms,"
            " codec, bucket, object_key, size_bytes, sha256)"
            " SELECT $1, id, agent_id, $2, $3, 10000, 'h264', 'recordings', $4, 10, $5"
            " FROM cameras WHERE id = $6",
            uuid.uuid4(), start, start + timedelta(seconds=10), f"t/{uuid.uuid4()}.mp4",
            "0" * 64, w["cam_a"],
        )  # fmt: skip
    inst = await central_api.login("instalador@a.example", PASSWORD)
    admin = await central_api.login("admin@example.com", PASSWORD)
    http = central_api.http

    plan = await http.patch(f"/api/cities/{w['a']}", json={"plano_retencao_dias": 7}, headers=admin)
    assert plan.status_code == 200 and plan.json()["plano_retencao_dias"] == 7
    bad = await http.patch(f"/api/cities/{w['a']}", json={"plano_retencao_dias": 9}, headers=admin)
    assert bad.status_code == 422 and "plano_retencao_dias" in bad.text
    assert (
        await http.patch(f"/api/cities/{w['a']}", json={"nome": "X"}, headers=inst)
    ).status_code == 403, "installers do not edit cities"

    cam = f"/api/cameras/{w['cam_a']}"
    moved = await http.patch(
        cam, json={"nome": "Portaria", "agent_id": str(other_agent_a)}, headers=inst
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["nome"] == "Portaria" and moved.json()["agent_id"] == str(other_agent_a)
    foreign = await http.patch(cam, json={"agent_id": str(agent_b)}, headers=inst)
    assert foreign.status_code == 422 and "agent_id" in foreign.text
    assert (await http.patch(cam, json={"nome": None}, headers=inst)).status_code == 422
    cleared = await http.patch(cam, json={"localizacao": None}, headers=inst)
    assert cleared.status_code == 200 and cleared.json()["localizacao"] is None
    for other in (f"/api/cameras/{w['cam_b']}", f"/api/cameras/{uuid.uuid4()}"):
        assert (await http.patch(other, json={"nome": "x"}, headers=inst)).status_code == 404
        assert (await http.delete(other, headers=inst)).status_code == 404

    held = await http.delete(cam, headers=inst)
    assert held.status_code == 409 and "segments" in held.text
    empty = await http.post(
        "/api/cameras",
        json={"cidade_id": str(w["a"]), "nome": "nova", "url_rtsp": "rtsp://10.0.0.9/n"},
        headers=inst,
    )
    assert empty.status_code == 201
    assert (
        await http.delete(f"/api/cameras/{empty.json()['id']}", headers=inst)
    ).status_code == 204
    async with db_pool.acquire() as conn:
        actions = [
            r["action"] for r in await conn.fetch("SELECT action FROM audit_log ORDER BY id")
        ]
    assert actions == ["city.update", "camera.update", "camera.update", "camera.delete"]
