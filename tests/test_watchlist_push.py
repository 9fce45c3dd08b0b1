"""Watchlists reach agents over the command channel: an operator's change at central becomes
the agent's local list (matched offline), newer versions replace older ones, a stale or
repeated update changes nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid

import asyncpg
import pytest

from agent.commands import WATCHLIST_VERSION_KEY
from central import watchlists
from central.clipworker import CommandPublisher
from shared.messages import WatchlistPlate, WatchlistUpdate
from tests.central_fixtures import CentralProcess
from tests.test_end_to_end import RunningAgent, agent  # noqa: F401  (the agent fixture)


def local_list(running: RunningAgent) -> tuple[list[tuple[str, str]], str | None]:
    """The agent's watchlist (plate, reason) and the version it holds (read-only peek)."""
    conn = sqlite3.connect(running.config.data_dir / "agent.sqlite3")
    try:
        plates = conn.execute("SELECT plate, reason FROM watchlist ORDER BY plate").fetchall()
        version = conn.execute(
            "SELECT value FROM meta WHERE key = ?", [WATCHLIST_VERSION_KEY]
        ).fetchone()
    finally:
        conn.close()
    return [tuple(p) for p in plates], version[0] if version else None


async def until_local(
    running: RunningAgent, pool: asyncpg.Pool, expected: list[tuple[str, str]]
) -> int:
    """Wait until the agent holds ``expected`` at the city's current version; returns it."""
    async with pool.acquire() as conn:
        version, _ = await watchlists.city_entries(conn, uuid.UUID(str(running.ids["city_id"])))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if local_list(running) == (expected, str(version)):
            return version
        await asyncio.sleep(0.3)
    raise AssertionError(f"agent holds {local_list(running)}, expected {expected} v{version}")


@pytest.mark.timeout(180)
async def test_watchlist_changes_reach_the_agent(
    central_api: CentralProcess,
    agent: RunningAgent,  # noqa: F811
    db_pool: asyncpg.Pool,
    amqp_url: str,
) -> None:
    http, headers = central_api.http, agent.headers
    city = str(agent.ids["city_id"])
    made = await http.post(
        "/api/watchlists", json={"cidade_id": city, "name": "Roubados"}, headers=headers
    )
    assert made.status_code == 201, made.text
    wl = made.json()["id"]
    for plate, reason in (("BRA2E19", "roubo"), ("ABC1234", "furto")):
        resp = await http.put(
            f"/api/watchlists/{wl}/plates", json={"plate": plate, "reason": reason},
            headers=headers,
        )  # fmt: skip
        assert resp.status_code == 201, resp.text

    publisher = CommandPublisher(amqp_url)
    try:
        assert await watchlists.push_due(db_pool, publisher) == 1
        assert await watchlists.push_due(db_pool, publisher) == 0, "sent once per version"
        v1 = await until_local(agent, db_pool, [("ABC1234", "furto"), ("BRA2E19", "roubo")])

        gone = await http.delete(f"/api/watchlists/{wl}/plates/ABC1234", headers=headers)
        assert gone.status_code == 204
        assert await watchlists.push_due(db_pool, publisher) == 1
        v2 = await until_local(agent, db_pool, [("BRA2E19", "roubo")])
        assert v2 > v1

        # An old version arriving late (or resent) changes nothing.
        city_id = uuid.UUID(str(agent.ids["city_id"]))
        stale = WatchlistUpdate(
            update_id=watchlists.update_id(city_id, v1),
            agent_id=uuid.UUID(str(agent.ids["agent_id"])), city_id=city_id, version=v1,
            plates=[WatchlistPlate(plate="ZZZ9Z99", watchlist_id=uuid.UUID(wl), reason="velho")],
        )  # fmt: skip
        await publisher.publish(stale)
        await asyncio.sleep(2)
        assert local_list(agent) == ([("BRA2E19", "roubo")], str(v2))
        assert not agent.task.done(), "the agent keeps running"
    finally:
        await publisher.close()
