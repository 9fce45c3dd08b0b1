"""Multipart claim-check uploads against real S3, RabbitMQ, PostgreSQL and central's API: a large
segment goes up in parts and arrives whole and verified; complete is scoped to the agent's
city and its own uploads; a part that cannot be uploaded commits nothing and is retried later.

Central here puts objects above 6 MiB in 5 MiB parts (S3's smallest) instead of 128 / 16 MiB,
and signs URLs for agents through a TCP proxy in front of S3 (``s3_public_endpoint``), so the
test can cut the agent's path to object storage while central still reaches it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from minio import Minio
from minio.error import S3Error

from agent import relay as relay_module
from agent.relay import Relay, RelayError
from agent.store import Segment, Store
from central import agents, storage
from central.broker import BrokerAdmin
from central.settings import Settings
from devstack.pytest_plugin import S3Info
from devstack.tcpproxy import TcpProxy
from tests.central.test_ingest import make_city
from tests.central_fixtures import CentralProcess
from tests.test_relay_throughput import agent_config

pytestmark = pytest.mark.timeout(180)

MiB = 1024**2


@pytest.fixture
async def s3_proxy(s3: S3Info) -> AsyncIterator[TcpProxy]:
    host, port = s3.endpoint.rsplit(":", 1)
    async with TcpProxy(host, int(port)) as proxy:
        yield proxy


@pytest.fixture
def central_settings(central_settings: Settings, s3_proxy: TcpProxy) -> Settings:
    return central_settings.model_copy(
        update={
            "multipart_threshold_bytes": 6 * MiB,
            "multipart_part_bytes": 5 * MiB,
            "s3_public_endpoint": f"127.0.0.1:{s3_proxy.port}",
        }
    )


async def agent_site(
    db_pool: asyncpg.Pool, broker_admin: BrokerAdmin, name: str
) -> tuple[dict[str, Any], str]:
    """A city with a camera and an agent, and the agent's API token."""
    site = await make_city(db_pool, broker_admin, name)
    async with db_pool.acquire() as conn:
        token = await agents.rotate_token(conn, site["agent"])
    return site, token


async def queue_segment(store: Store, site: dict[str, Any], path: Path, size: int) -> Segment:
    """A segment of random bytes registered in the agent's store with its outbox row."""
    data = os.urandom(size)
    await asyncio.to_thread(path.write_bytes, data)
    run_id = uuid.uuid4()
    await store.add_run(run_id, "cam", site["camera"], 1_700_000_000_000)
    seg = Segment(uuid.uuid4(), site["camera"], run_id, 0, path, 1_700_000_000_000, 2000, size,
                  hashlib.sha256(data).hexdigest(), "h264")  # fmt: skip
    assert await store.add_segment(seg)
    return seg


async def stored_segment(pool: asyncpg.Pool, segment_id: uuid.UUID, timeout_s: float = 60) -> Any:
    """The segment's row at central once its blob is verified and committed (None if not)."""
    async with pool.acquire() as conn:
        for _ in range(int(timeout_s * 10)):
            row = await conn.fetchrow(
                "SELECT object_key, size_bytes, sha256 FROM segments WHERE id = $1", segment_id
            )
            if row is not None:
                return row
            await asyncio.sleep(0.1)
    return None


def unfinished_uploads(s3: Minio, key: str) -> list[str]:
    listed = s3._list_multipart_uploads("recordings", prefix=key)
    return [u.upload_id for u in listed.uploads if u.object_name == key]


@dataclass
class AgentRig:
    site: dict[str, Any]
    store: Store
    relay: Relay


@pytest.fixture
async def rig(
    central_api: CentralProcess,
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    amqp_url: str,
    broker_admin: BrokerAdmin,
    tmp_path: Path,
) -> AsyncIterator[AgentRig]:
    """An enrolled agent's store and relay, talking to central's API and ingest."""
    site, token = await agent_site(db_pool, broker_admin, f"Cidade {uuid.uuid4().hex[:8]}")
    store = Store(tmp_path / "agent.sqlite3", site["agent"])
    await store.open()
    relay = Relay(agent_config(site, amqp_url, tmp_path, api_url=central_api.url, token=token),
                  store)  # fmt: skip
    yield AgentRig(site, store, relay)
    await relay.close()
    await store.close()


async def test_large_segment_goes_up_in_parts_and_arrives_verified(
    rig: AgentRig, db_pool: asyncpg.Pool, s3_client: Minio, tmp_path: Path
) -> None:
    store, relay = rig.store, rig.relay
    size = 12 * MiB + 12345  # three parts: 5 + 5 + the rest
    seg = await queue_segment(store, rig.site, tmp_path / "seg.mp4", size)
    small = await queue_segment(store, rig.site, tmp_path / "small.mp4", 3 * MiB)
    assert await relay.run_once() == 2
    assert relay.uploaded_bytes == size + 3 * MiB
    assert (await store.backlog())["pending"] == {}
    row = await stored_segment(db_pool, seg.segment_id)
    assert row is not None, "the segment never arrived at central"
    assert (row["size_bytes"], row["sha256"]) == (size, seg.sha256)
    # The object is whole, and it went up in three parts (a multipart ETag ends in -<parts>);
    # the small segment went as one plain PUT.
    obj = s3_client.get_object("recordings", row["object_key"])
    try:
        assert hashlib.sha256(obj.read()).hexdigest() == seg.sha256
    finally:
        obj.close()
        obj.release_conn()
    stat = s3_client.stat_object("recordings", row["object_key"])
    assert stat.size == size and stat.etag.endswith("-3"), stat.etag
    assert stat.content_type == "video/mp4"
    small_row = await stored_segment(db_pool, small.segment_id)
    assert small_row is not None
    assert "-" not in s3_client.stat_object("recordings", small_row["object_key"]).etag
    assert unfinished_uploads(s3_client, row["object_key"]) == []


async def test_complete_is_scoped_to_the_agents_city_and_its_uploads(
    central_api: CentralProcess,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    broker_admin: BrokerAdmin,
) -> None:
    site, token = await agent_site(db_pool, broker_admin, "Marília")
    other, other_token = await agent_site(db_pool, broker_admin, "Tupã")
    auth = {"Authorization": f"Bearer {token}"}
    data = os.urandom(7 * MiB)
    object_id = str(uuid.uuid4())
    ask = {"kind": "segment", "camera_id": str(site["camera"]), "object_id": object_id,
           "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    http = central_api.http
    # An agent that does not say it can upload in parts gets one URL whatever the size.
    old = (await http.post("/api/agent/v1/uploads", json=ask, headers=auth)).json()
    assert old["url"] and old["parts"] is None
    grant = (await http.post("/api/agent/v1/uploads", json={**ask, "multipart": True},
                             headers=auth)).json()  # fmt: skip
    assert grant["url"] is None and grant["part_size"] == 5 * MiB
    assert [p["part_number"] for p in grant["parts"]] == [1, 2]
    parts = []
    async with httpx.AsyncClient() as s3_http:
        for part in grant["parts"]:
            start = (part["part_number"] - 1) * grant["part_size"]
            put = await s3_http.put(part["url"], content=data[start : start + grant["part_size"]])
            assert put.status_code == 200, put.text
            parts.append({"part_number": part["part_number"], "etag": put.headers["ETag"]})
    done = {"kind": "segment", "camera_id": str(site["camera"]), "object_id": object_id,
            "upload_id": grant["upload_id"], "parts": parts}  # fmt: skip

    async def complete(body: dict[str, Any], token_: str = token) -> httpx.Response:
        return await http.post("/api/agent/v1/uploads/complete", json=body,
                                headers={"Authorization": f"Bearer {token_}"})  # fmt: skip

    # Another city's agent cannot complete it, not even naming its own camera (another key).
    assert (await complete(done, other_token)).status_code == 404
    theirs = await complete({**done, "camera_id": str(other["camera"])}, other_token)
    assert theirs.status_code == 404 and "no such upload" in theirs.text
    # Nor can this agent name the other city's camera.
    assert (await complete({**done, "camera_id": str(other["camera"])})).status_code == 404
    # Unknown upload id, parts out of order, a part that was never uploaded: 4xx.
    assert (await complete({**done, "upload_id": "not-an-upload"})).status_code == 404
    raw_id = grant["upload_id"].rpartition("~")[0]
    assert (await complete({**done, "upload_id": raw_id})).status_code == 404
    assert (await complete({**done, "upload_id": raw_id + "~" + "0" * 32})).status_code == 404
    assert (await complete({**done, "parts": parts[::-1]})).status_code == 400
    bad = [parts[0], {"part_number": 2, "etag": '"0123456789abcdef0123456789abcdef"'}]
    assert (await complete({**done, "parts": bad})).status_code == 400
    assert (await complete({**done, "parts": []})).status_code == 422
    with pytest.raises(S3Error, match="NoSuchKey"):
        s3_client.stat_object("recordings", grant["key"])
    # The real thing completes once; a second time is a clear 404, the object stays whole.
    first = await complete(done)
    assert first.status_code == 200, first.text
    assert first.json()["etag"].endswith("-2") and first.json()["key"] == grant["key"]
    again = await complete(done)
    assert again.status_code == 404 and "no such upload" in again.text
    obj = s3_client.get_object("recordings", grant["key"])
    try:
        assert obj.read() == data
    finally:
        obj.close()
        obj.release_conn()
    # Abort: unknown or finished uploads are 404, and it is scoped to the city as well.
    ref = {k: done[k] for k in ("kind", "camera_id", "object_id", "upload_id")}
    abort = await http.post("/api/agent/v1/uploads/abort", json=ref, headers=auth)
    assert abort.status_code == 404
    again_grant = (await http.post("/api/agent/v1/uploads", json={**ask, "multipart": True},
                                   headers=auth)).json()  # fmt: skip
    ref["upload_id"] = again_grant["upload_id"]
    other_auth = {"Authorization": f"Bearer {other_token}"}
    foreign = await http.post("/api/agent/v1/uploads/abort", json=ref, headers=other_auth)
    assert foreign.status_code == 404
    assert len(unfinished_uploads(s3_client, grant["key"])) == 1
    abort = await http.post("/api/agent/v1/uploads/abort", json=ref, headers=auth)
    assert abort.status_code == 204
    assert unfinished_uploads(s3_client, grant["key"]) == []


async def test_failed_part_commits_nothing_and_a_later_round_succeeds(
    rig: AgentRig, db_pool: asyncpg.Pool, s3_client: Minio, s3_proxy: TcpProxy, tmp_path: Path
) -> None:
    store, relay, site = rig.store, rig.relay, rig.site
    seg = await queue_segment(store, site, tmp_path / "seg.mp4", 11 * MiB)
    key = storage.segment_key(site["city"], site["camera"], seg.segment_id)
    # The agent loses its path to object storage once the first part is in: the other parts
    # fail (connection refused) through every retry.
    put_part = relay._put_part
    cut = False

    async def then_cut(url: str, data: bytes, number: int) -> str:
        nonlocal cut
        etag = await put_part(url, data, number)
        if not cut:
            cut = True
            assert unfinished_uploads(s3_client, key) != []  # a part is stored, unfinished
            await s3_proxy.cut()
        return etag

    relay._put_part = then_cut  # type: ignore[method-assign]
    with pytest.raises(RelayError, match="part 2 failed 4 times"):
        await relay.run_once()
    # Nothing committed: no object, no unfinished upload left behind, no row at central.
    with pytest.raises(S3Error, match="NoSuchKey"):
        s3_client.stat_object("recordings", key)
    assert unfinished_uploads(s3_client, key) == []
    assert await stored_segment(db_pool, seg.segment_id, timeout_s=1) is None
    # The outbox row is still unsent, its failed attempt counted.
    assert (await store.backlog())["pending"] == {"segment": 1}
    assert (await store.pending_of(("segment",), 1))[0].attempts == 1
    # The link returns: the next round uploads it whole.
    await s3_proxy.restore()
    assert await relay.run_once() == 1
    assert (await store.backlog())["pending"] == {}
    stored = await stored_segment(db_pool, seg.segment_id)
    assert stored is not None and stored["sha256"] == seg.sha256
    assert s3_client.stat_object("recordings", key).etag.endswith("-3")
    assert unfinished_uploads(s3_client, key) == []


async def test_part_urls_asked_for_again_when_old(
    rig: AgentRig,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # URLs count as old at once: every part goes with URLs asked for again for the same
    # upload, as a slow upload's later parts do.
    monkeypatch.setattr(relay_module, "PART_URL_REFRESH", 0.0)
    seg = await queue_segment(rig.store, rig.site, tmp_path / "seg.mp4", 11 * MiB)
    assert await rig.relay.run_once() == 1
    stored = await stored_segment(db_pool, seg.segment_id)
    assert stored is not None and stored["sha256"] == seg.sha256
    assert s3_client.stat_object("recordings", stored["object_key"]).etag.endswith("-3")
