"""Watchlists and alerts through the API: plates validated, changes versioned and audited,
another city's lists and alerts answering like missing ones."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from central import alerts, watchlists
from tests.central.test_api_scoping import PASSWORD, world
from tests.central_fixtures import CentralProcess

pytestmark = pytest.mark.timeout(90)


async def test_watchlist_plates_are_checked_versioned_and_audited(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    w = await world(db_pool)
    op = await central_api.login("operador@a.example", PASSWORD)
    http = central_api.http
    made = await http.post(
        "/api/watchlists", json={"cidade_id": str(w["a"]), "name": "Roubados"}, headers=op
    )
    assert made.status_code == 201, made.text
    wl = made.json()["id"]
    again = await http.post(
        "/api/watchlists", json={"cidade_id": str(w["a"]), "name": "Roubados"}, headers=op
    )
    assert again.status_code == 409 and "name" in again.json()["detail"]

    async with db_pool.acquire() as conn:
        v0, entries0 = await watchlists.city_entries(conn, w["a"])
    assert entries0 == []
    for text in ("abc-1234", "BRA2E19"):
        resp = await http.put(
            f"/api/watchlists/{wl}/plates", json={"plate": text, "reason": "furto"}, headers=op
        )
        assert resp.status_code == 201, resp.text
    bad = await http.put(f"/api/watchlists/{wl}/plates", json={"plate": "HELLO12"}, headers=op)
    assert bad.status_code == 422 and "plate" in bad.text
    # Changing a reason keeps one entry and is a change agents must get.
    await http.put(
        f"/api/watchlists/{wl}/plates", json={"plate": "ABC1234", "reason": "roubo"}, headers=op
    )
    view = (await http.get(f"/api/watchlists/{wl}", headers=op)).json()
    assert [(e["plate"], e["reason"]) for e in view["plates"]] == [
        ("ABC1234", "roubo"),
        ("BRA2E19", "furto"),
    ]
    assert view["entries"] == 2
    async with db_pool.acquire() as conn:
        v1, entries1 = await watchlists.city_entries(conn, w["a"])
        assert [e["plate"] for e in entries1] == ["ABC1234", "BRA2E19"] and v1 > v0
        actions = [
            r["action"]
            for r in await conn.fetch(
                "SELECT action FROM audit_log WHERE user_id = $1 ORDER BY id", w["operador"]
            )
        ]
    assert actions == ["watchlist.create", "watchlist.add", "watchlist.add", "watchlist.add"]

    gone = await http.delete(f"/api/watchlists/{wl}/plates/abc-1234", headers=op)
    assert gone.status_code == 204
    assert (
        await http.delete(f"/api/watchlists/{wl}/plates/ABC1234", headers=op)
    ).status_code == 404
    async with db_pool.acquire() as conn:
        v2, entries2 = await watchlists.city_entries(conn, w["a"])
    assert [e["plate"] for e in entries2] == ["BRA2E19"] and v2 > v1


async def test_city_b_watchlists_and_alerts_look_missing(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    w = await world(db_pool)
    async with db_pool.acquire() as conn:
        wl_b = await watchlists.create_watchlist(conn, w["b"], "B", None)
        agent_b = await conn.fetchval("SELECT agent_id FROM cameras WHERE id = $1", w["cam_b"])
        agent_a = await conn.fetchval("SELECT agent_id FROM cameras WHERE id = $1", w["cam_a"])
        now = datetime.now(UTC)
        alert_a, alert_b = uuid.uuid4(), uuid.uuid4()
        rows = [
            {
                "id": alert_id, "cidade_id": city, "camera_id": cam, "agent_id": agent,
                "read_id": uuid.uuid4(), "plate": "BRA2E19", "listed_plate": "BRA2E19",
                "match": "exact", "detected_at": now - timedelta(seconds=i),
            }
            for i, (alert_id, city, cam, agent) in enumerate(
                ((alert_a, w["a"], w["cam_a"], agent_a), (alert_b, w["b"], w["cam_b"], agent_b))
            )
        ]  # fmt: skip
        assert await alerts.insert_alerts(conn, rows) == 2
        assert await alerts.insert_alerts(conn, rows) == 0, "a redelivered alert is stored once"
    op = await central_api.login("operador@a.example", PASSWORD)
    http = central_api.http

    assert (await http.get("/api/watchlists", headers=op)).json() == []
    for method, other, missing in (
        ("GET", f"/api/watchlists/{wl_b}", f"/api/watchlists/{uuid.uuid4()}"),
        ("DELETE", f"/api/watchlists/{wl_b}", f"/api/watchlists/{uuid.uuid4()}"),
        ("POST", f"/api/alerts/{alert_b}/acknowledge", f"/api/alerts/{uuid.uuid4()}/acknowledge"),
    ):
        r_other = await http.request(method, other, headers=op)
        r_missing = await http.request(method, missing, headers=op)
        assert r_other.status_code == r_missing.status_code == 404, (method, other)
    put_b = await http.put(f"/api/watchlists/{wl_b}/plates", json={"plate": "ABC1234"}, headers=op)
    assert put_b.status_code == 404
    in_b = {"cidade_id": str(w["b"]), "name": "x"}
    assert (await http.post("/api/watchlists", json=in_b, headers=op)).status_code == 404

    page = (await http.get("/api/alerts", headers=op)).json()
    assert [a["id"] for a in page["items"]] == [str(alert_a)]
    acked = await http.post(f"/api/alerts/{alert_a}/acknowledge", headers=op)
    assert acked.status_code == 200 and acked.json()["acknowledged_by"] == str(w["operador"])
    assert (await http.get("/api/alerts?open_only=true", headers=op)).json()["items"] == []
    # The installer role reads alerts but may not edit watchlists.
    inst = await central_api.login("instalador@a.example", PASSWORD)
    assert (await http.get("/api/watchlists", headers=inst)).status_code == 403
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM watchlists WHERE id = $1", wl_b) == 1
