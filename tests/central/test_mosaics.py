"""Mosaics: a user's own grids, only of cameras the user may see, never leaking lost access."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from tests.central.test_api_scoping import PASSWORD, world
from tests.central_fixtures import CentralProcess

pytestmark = pytest.mark.timeout(90)


async def test_mosaic_lifecycle_and_scoping(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    w = await world(db_pool)
    op = await central_api.login("operador@a.example", PASSWORD)
    inst = await central_api.login("instalador@a.example", PASSWORD)
    http = central_api.http

    body = {"name": "Centro", "layout": "2x2", "camera_ids": [str(w["cam_a"])]}
    created = await http.post("/api/mosaics", json=body, headers=op)
    assert created.status_code == 201, created.text
    mosaic = created.json()["id"]

    foreign = {**body, "camera_ids": [str(w["cam_b"])]}
    assert (await http.post("/api/mosaics", json=foreign, headers=op)).status_code == 404
    too_many = {**body, "camera_ids": [str(w["cam_a"])] * 5}
    resp = await http.post("/api/mosaics", json=too_many, headers=op)
    assert resp.status_code == 422 and "camera_ids" in resp.text

    view = (await http.get(f"/api/mosaics/{mosaic}", headers=op)).json()
    assert [c["camera_id"] for c in view["cells"]] == [str(w["cam_a"])]
    assert view["cells"][0]["thumbnail_url"] is None  # no agent has sent one

    # Another user's mosaic looks missing, for reading, changing and deleting.
    assert (await http.get(f"/api/mosaics/{mosaic}", headers=inst)).status_code == 404
    assert (await http.put(f"/api/mosaics/{mosaic}", json=body, headers=inst)).status_code == 404
    assert (await http.delete(f"/api/mosaics/{mosaic}", headers=inst)).status_code == 404
    assert (await http.get("/api/mosaics", headers=inst)).json() == []

    # Losing access to the city hides its cameras from the mosaic at once.
    async with db_pool.acquire() as conn:
        await conn.execute("DELETE FROM user_cidades WHERE user_id = $1", w["operador"])
    assert (await http.get(f"/api/mosaics/{mosaic}", headers=op)).json()["cells"] == []

    assert (await http.delete(f"/api/mosaics/{mosaic}", headers=op)).status_code == 204
    assert (await http.get(f"/api/mosaics/{uuid.uuid4()}", headers=op)).status_code == 404
