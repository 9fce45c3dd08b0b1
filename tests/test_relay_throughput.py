"""The relay's throughput shape against real RabbitMQ, PostgreSQL, S3 and central's API: plate
reads many to a message and stored once each, a refused read dead-lettered alone, and the
bandwidth cap on uploads that never holds plate reads back."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from agent.config import AgentConfig, CentralConfig, ConfigError, SyncConfig, parse_config
from agent.relay import Relay
from agent.store import RawOutboxRow, Segment, Store
from central import agents
from central.broker import BrokerAdmin
from shared.messages import (
    MAX_BATCH_BYTES,
    PlateRead,
    PlateReadBatch,
    decode,
    encode,
)
from shared.topology import PLATES_QUEUE, routing_key
from tests.central.test_ingest import (
    agent_url,
    dead_letters,
    lpr_count,
    make_city,
    plate_read,
    publish_many,
)
from tests.central_fixtures import CentralProcess

pytestmark = pytest.mark.timeout(120)


def agent_config(
    site: dict[str, Any], amqp_url: str, data_dir: Path, *, api_url: str = "http://127.0.0.1:9/",
    token: str = "unused", max_upload_mbps: float = 0,  # noqa: S107 - not a secret
) -> AgentConfig:  # fmt: skip
    return AgentConfig(
        agent_id=site["agent"],
        city_id=site["city"],
        data_dir=data_dir,
        central=CentralConfig(
            api_url=api_url, amqp_url=SecretStr(agent_url(amqp_url, site)), token=SecretStr(token)
        ),
        sync=SyncConfig(max_upload_mbps=max_upload_mbps),
    )


async def wait_reads(pool: asyncpg.Pool, camera: uuid.UUID, n: int, timeout_s: float) -> int:
    for _ in range(int(timeout_s * 10)):
        if await lpr_count(pool, camera) >= n:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # a duplicate would land by now
    return await lpr_count(pool, camera)


class ArrivingStore(Store):
    """Runs ``arrive`` once, just after the first read of the outbox that found rows (rows
    committed while a drain is under way)."""

    def __init__(
        self, path: Path, agent_id: uuid.UUID, arrive: Callable[[Store], Awaitable[None]]
    ) -> None:
        super().__init__(path, agent_id)
        self._arrive: Callable[[Store], Awaitable[None]] | None = arrive

    async def pending_of(self, *args: Any, **kwargs: Any) -> list[RawOutboxRow]:
        rows = await super().pending_of(*args, **kwargs)
        if rows and self._arrive is not None:
            arrive, self._arrive = self._arrive, None
            await arrive(self)
        return rows


@contextlib.asynccontextmanager
async def drain_recorded(
    site: dict[str, Any], amqp_url: str, tmp_path: Path, arrive: Callable[[Store], Awaitable[None]]
) -> AsyncIterator[tuple[Store, Relay, list[str]]]:
    """An open ArrivingStore, a relay on it and the message ids it publishes, in order."""
    store = ArrivingStore(tmp_path / "agent.sqlite3", site["agent"], arrive)
    await store.open()
    relay = Relay(agent_config(site, amqp_url, tmp_path), store)
    order: list[str] = []
    publish = relay._publish

    async def recording(exchange: Any, body: bytes, key: str, message_id: str) -> None:
        order.append(message_id)
        await publish(exchange, body, key, message_id)

    relay._publish = recording  # type: ignore[method-assign]
    try:
        yield store, relay, order
    finally:
        await relay.close()
        await store.close()


def test_runs_of_plate_reads_become_batches_in_order(tmp_path: Path) -> None:
    site = {"agent": uuid.uuid4(), "city": uuid.uuid4(), "camera": uuid.uuid4(), "user": "u",
            "password": "p"}  # fmt: skip
    relay = Relay(
        agent_config(site, "amqp://u:p@127.0.0.1:1/", tmp_path), Store(tmp_path / "s.sqlite3")
    )
    reads = [plate_read(site, f"ABC{n:04d}") for n in range(250)]
    rows = [RawOutboxRow(i, 10, "plate_read", str(r.read_id), r.model_dump_json(), 0)
            for i, r in enumerate(reads)]  # fmt: skip
    rows.insert(120, RawOutboxRow(999, 15, "loss_event", "x", '{"loss": 1}', 0))
    messages = list(relay._messages(rows))
    kinds = [key.split(".")[1] for _, key, _, _ in messages]
    assert kinds == ["plate_read_batch"] * 2 + ["loss_event"] + ["plate_read_batch"] * 2
    assert [len(ids) for *_, ids in messages] == [100, 20, 1, 100, 30]
    # Every batch is a valid wire message holding its rows' reads, in the outbox's order.
    sent: list[PlateRead] = []
    for body, key, _, ids in messages:
        if key.split(".")[1] == "plate_read_batch":
            batch = decode(body, "plate_read_batch")
            assert isinstance(batch, PlateReadBatch) and len(batch.reads) == len(ids)
            sent.extend(batch.reads)
    assert sent == reads
    # Reads one by one when asked (the per-read shape the benchmark compares with).
    single = Relay(relay.config, relay.store, plate_reads_per_message=1)
    assert {key.split(".")[1] for _, key, _, _ in single._messages(rows)} == {
        "plate_read", "loss_event"
    }  # fmt: skip


async def test_backlog_stored_once_and_a_refused_read_dead_lettered_alone(
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    amqp_url: str,
    broker_admin: BrokerAdmin,
    tmp_path: Path,
) -> None:
    site = await make_city(db_pool, broker_admin, "Franca")
    other = await make_city(db_pool, broker_admin, "Limeira")
    store = Store(tmp_path / "agent.sqlite3", site["agent"])
    await store.open()
    relay = Relay(agent_config(site, amqp_url, tmp_path), store)
    try:
        reads = [plate_read(site, f"ABC{n:04d}") for n in range(1050)]
        # A read for a camera of another city: central must refuse that one read only.
        foreign = plate_read(site).model_copy(update={"camera_id": other["camera"]})
        assert await store.add_plate_reads([*reads[:450], foreign, *reads[450:]]) == 1051
        assert (await store.backlog())["pending"] == {"plate_read": 1051}
        sent = 0
        while n := await relay.run_once():
            sent += n
        assert sent == 1051 and relay.sent == 1051
        assert await wait_reads(db_pool, site["camera"], len(reads), 60) == len(reads)
        async with db_pool.acquire() as conn:
            stored = {r["id"] for r in await conn.fetch(
                "SELECT id FROM lpr_events WHERE camera_id = $1", site["camera"])}  # fmt: skip
        assert stored == {r.read_id for r in reads}
        letters = await dead_letters(amqp_url, expect=1, queue=PLATES_QUEUE.dead_letter_queue)
        assert len(letters) == 1 and "not in agent" in str(letters[0]["reason"])
        assert decode(letters[0]["body"], "plate_read") == foreign
        assert (await store.backlog())["pending"] == {}
        assert await relay.run_once() == 0
    finally:
        await relay.close()
        await store.close()


async def test_urgent_rows_overtake_a_long_drain(
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    amqp_url: str,
    broker_admin: BrokerAdmin,
    tmp_path: Path,
) -> None:
    site = await make_city(db_pool, broker_admin, "Ourinhos")
    urgent = [plate_read(site, f"URG{n:04d}") for n in range(10)]

    async def arrive(store: Store) -> None:
        await store.add_plate_reads(urgent)

    async with drain_recorded(site, amqp_url, tmp_path, arrive) as (store, relay, order):
        backlog = [plate_read(site, f"LOW{n:04d}") for n in range(1500)]
        await store.add_plate_reads(backlog)
        # The backlog ranks below plate reads from now on (as loss events do).
        await store._run(lambda: store.db.execute("UPDATE outbox SET priority = 15"))
        assert await relay._pump() == len(backlog) + len(urgent)
        # 500 rows read first (5 messages of 100), then the newcomers at once, then the rest.
        assert len(order) == 16
        assert order[5] == f"plate_read_batch:{urgent[0].read_id}+9"
        assert await wait_reads(db_pool, site["camera"], 1510, 60) == 1510


async def test_batches_redelivered_or_forged_or_oversized(
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    amqp_url: str,
    broker_admin: BrokerAdmin,
) -> None:
    site = await make_city(db_pool, broker_admin, "Jaú")
    other = await make_city(db_pool, broker_admin, "Assis")
    key = routing_key("plate_read_batch", site["city"], site["agent"])
    reads = [plate_read(site, f"XYZ{n:04d}") for n in range(150)]
    batch = encode(PlateReadBatch(agent_id=site["agent"], reads=reads))
    # The same batch twice, and some of its reads alone too: each read is stored once.
    single_key = routing_key("plate_read", site["city"], site["agent"])
    await publish_many(
        amqp_url, site, [(key, batch), (key, batch), *((single_key, encode(r)) for r in reads[:20])]
    )
    # Another agent's read smuggled into this agent's batch, and a batch over the size limit.
    theirs = plate_read(other).model_copy(update={"camera_id": site["camera"]})
    forged = PlateReadBatch.model_construct(
        type="plate_read_batch", schema_version=1, agent_id=site["agent"], reads=[reads[0], theirs]
    )
    big = b'{"type":"plate_read_batch","reads":[' + b" " * MAX_BATCH_BYTES + b"]}"
    await publish_many(amqp_url, site, [(key, forged.model_dump_json().encode()), (key, big)])
    assert await wait_reads(db_pool, site["camera"], len(reads), 30) == len(reads)
    letters = await dead_letters(amqp_url, expect=2, queue=PLATES_QUEUE.dead_letter_queue)
    reasons = sorted(str(letter["reason"]) for letter in letters)
    assert len(reasons) == 2, reasons
    assert "body too large" in reasons[0] and "is not the batch's" in reasons[1], reasons


async def test_upload_cap_paces_blobs_while_plate_reads_flow(
    central_api: CentralProcess,
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    amqp_url: str,
    broker_admin: BrokerAdmin,
    tmp_path: Path,
) -> None:
    site = await make_city(db_pool, broker_admin, "Botucatu")
    async with db_pool.acquire() as conn:
        token = await agents.rotate_token(conn, site["agent"])
    mbps = 4.0  # 500,000 bytes/s
    config = agent_config(site, amqp_url, tmp_path, api_url=central_api.url, token=token,
                          max_upload_mbps=mbps)  # fmt: skip
    store = Store(tmp_path / "agent.sqlite3", site["agent"])
    await store.open()
    size = 4 * 1024 * 1024
    data = os.urandom(size)
    run_id = uuid.uuid4()
    path = tmp_path / "seg.mp4"
    path.write_bytes(data)
    await store.add_run(run_id, "cam", site["camera"], 1_700_000_000_000)
    seg = Segment(uuid.uuid4(), site["camera"], run_id, 0, path, 1_700_000_000_000, 2000, size,
                  hashlib.sha256(data).hexdigest(), "h264")  # fmt: skip
    assert await store.add_segment(seg)
    assert (await store.backlog())["pending_blob_bytes"] == size
    relay = Relay(config, store)
    t0 = time.monotonic()
    task = asyncio.create_task(relay.run())
    try:
        for _ in range(300):  # the upload is under way
            if relay.uploaded_bytes > 0 or task.done():
                break
            await asyncio.sleep(0.05)
        assert relay.uploaded_bytes > 0 and not task.done()
        # Plate reads written now reach central while the upload is still going.
        reads = [plate_read(site, f"QRS{n:04d}") for n in range(300)]
        await store.add_plate_reads(reads)
        assert await wait_reads(db_pool, site["camera"], len(reads), 60) == len(reads)
        assert 0 < relay.uploaded_bytes < size, "the upload finished before the reads arrived"
        assert (await store.backlog())["pending"] == {"segment": 1}
        async with db_pool.acquire() as conn:
            for _ in range(600):
                stored = await conn.fetchval("SELECT size_bytes FROM segments WHERE id = $1",
                                             seg.segment_id)  # fmt: skip
                if stored is not None or task.done():
                    break
                await asyncio.sleep(0.05)
        elapsed = time.monotonic() - t0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        backlog = await store.backlog()
        await store.close()
    assert stored == size and relay.uploaded_bytes == size
    assert backlog["pending"] == {} and backlog["pending_blob_bytes"] == 0
    # A lower bound only (the machine may be slow, never fast beyond the cap): all but one
    # burst of the bytes at no more than the cap, with 10 % of slack for clock granularity.
    floor_s = (size - 64 * 1024) / (mbps * 125_000)
    assert elapsed >= 0.9 * floor_s, f"{size} bytes in {elapsed:.2f} s: over the cap"


def test_sync_config_cap() -> None:
    base = (
        "agent_id: 6f1c1f6e-0000-4000-8000-000000000001\n"
        "city_id: 6f1c1f6e-0000-4000-8000-000000000002\ndata_dir: /var/lib/gtvision\n"
        "central: {api_url: 'http://c/', amqp_url: 'amqp://a:b@c/', token: t}\n"
    )
    assert parse_config(base).sync.upload_bytes_per_s() is None
    capped = parse_config(base + "sync: {max_upload_mbps: 2.5}\n")
    assert capped.sync.upload_bytes_per_s() == 312_500
    for bad in ("sync: {max_upload_mbps: -1}\n", "sync: {max_upload_mbs: 2}\n"):
        with pytest.raises(ConfigError, match="sync -> max_upload_mb"):
            parse_config(base + bad)
