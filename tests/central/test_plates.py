"""Plate search on real PostgreSQL: exact, prefix, fuzzy (OCR look-alikes), city scoping,
keyset pages, and an audit entry for every search."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from central import plates
from shared.messages import PlateRead
from tests.central.test_api_scoping import PASSWORD, world
from tests.central_fixtures import CentralProcess

pytestmark = pytest.mark.timeout(90)


async def add_reads(pool: asyncpg.Pool, camera: uuid.UUID, city: uuid.UUID, *texts: str) -> None:
    reads = [
        PlateRead(read_id=uuid.uuid4(), agent_id=uuid.uuid4(), camera_id=camera, plate=text,
                  confidence=0.9, seen_ms=1_700_000_000_000 + i * 1000)
        for i, text in enumerate(texts)
    ]  # fmt: skip
    async with pool.acquire() as conn:
        await plates.insert_reads(conn, reads, {camera: city})


async def search(central: CentralProcess, headers: dict[str, str], **params: Any) -> Any:
    resp = await central.http.get("/api/plates", params=params, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_search_modes_scope_and_audit(
    central_api: CentralProcess, db_pool: asyncpg.Pool
) -> None:
    w = await world(db_pool)
    # Stored plates are canonical; OCR look-alikes survive only where both are valid: the
    # fifth character, a letter (Mercosul) or a digit (old format) - B/8 here.
    await add_reads(db_pool, w["cam_a"], w["a"], "BRA2E19", "BRA2E19", "BRA2B19", "BRA2819",
                    "ABC1234")  # fmt: skip
    await add_reads(db_pool, w["cam_b"], w["b"], "BRA2E19")
    op = await central_api.login("operador@a.example", PASSWORD)

    exact = await search(central_api, op, q="bra-2e19")
    assert [i["plate"] for i in exact["items"]] == ["BRA2E19", "BRA2E19"]  # city B's is hidden
    assert exact["items"][0]["detected_at"] > exact["items"][1]["detected_at"]  # newest first
    prefix = await search(central_api, op, q="BRA2", mode="prefix")
    assert sorted(i["plate"] for i in prefix["items"]) == [
        "BRA2819",
        "BRA2B19",
        "BRA2E19",
        "BRA2E19",
    ]
    fuzzy = {
        i["plate"] for i in (await search(central_api, op, q="BRA2819", mode="fuzzy"))["items"]
    }
    assert {"BRA2819", "BRA2B19"} <= fuzzy
    assert "ABC1234" not in fuzzy

    page1 = await search(central_api, op, q="BRA2", mode="prefix", limit=3)
    assert len(page1["items"]) == 3 and page1["next"]
    page2 = await search(central_api, op, q="BRA2", mode="prefix", limit=3, before=page1["next"])
    ids = [i["id"] for i in page1["items"] + page2["items"]]
    assert len(ids) == len(set(ids)) == 4

    bad = await central_api.http.get("/api/plates", params={"q": "PARE"}, headers=op)
    assert bad.status_code == 422 and "q" in bad.text

    b_read = (await search(central_api, await central_api.login("admin@example.com", PASSWORD),
                           q="BRA2E19", cidade_id=str(w["b"])))["items"][0]["id"]  # fmt: skip
    assert (await central_api.http.get(f"/api/plates/{b_read}", headers=op)).status_code == 404

    async with db_pool.acquire() as conn:
        logged = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE user_id = $1 AND action = 'plates.search'",
            w["operador"],
        )
    assert logged == 5  # every search that ran (the refused one never reached the data)
