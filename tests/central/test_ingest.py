"""Central ingest against real RabbitMQ, PostgreSQL and S3: idempotent writes, poison to the DLQ."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import pytest
from minio import Minio
from minio.error import S3Error

from central import agents, cameras, cities, plates, storage
from central.broker import BrokerAdmin
from shared.messages import (
    BlobRef,
    LossEvent,
    PlateRead,
    SegmentRecorded,
    ThumbnailTaken,
    WatchlistAlert,
    encode,
)
from shared.topology import (
    ALERTS_QUEUE,
    LOSSES_QUEUE,
    PLATES_QUEUE,
    SEGMENTS_QUEUE,
    find_events_exchange,
    routing_key,
)

pytestmark = pytest.mark.timeout(90)


async def make_city(pool: asyncpg.Pool, broker: BrokerAdmin, name: str) -> dict[str, Any]:
    """A city with a camera and an agent that has its own broker user (as enrolment makes)."""
    async with pool.acquire() as conn:
        city = await cities.create_city(conn, name, "SP", 15)
        agent, _token = await agents.create_agent(conn, city, f"agent-{name}")
        camera = await cameras.create_camera(conn, city, f"cam-{name}", "rtsp://x/y", agent)
    user, password = await broker.create_agent_user(agent, city)
    return {"city": city, "agent": agent, "camera": camera, "user": user, "password": password}


def agent_url(amqp_url: str, site: dict[str, Any]) -> str:
    plain = urlsplit(amqp_url)
    return f"amqp://{site['user']}:{site['password']}@{plain.hostname}:{plain.port}/"


def upload_segment(s3: Minio, site: dict[str, Any], data: bytes) -> SegmentRecorded:
    segment_id = uuid.uuid4()
    key = storage.segment_key(site["city"], site["camera"], segment_id)
    s3.put_object("recordings", key, io.BytesIO(data), len(data))
    return SegmentRecorded(
        segment_id=segment_id, agent_id=site["agent"], camera_id=site["camera"],
        start_ms=1_700_000_000_000, duration_ms=2000, codec="h264",
        blob=BlobRef(bucket="recordings", key=key, size_bytes=len(data),
                     sha256=hashlib.sha256(data).hexdigest()),
    )  # fmt: skip


async def publish_many(
    amqp_url: str, site: dict[str, Any] | None, items: list[tuple[str, bytes]]
) -> None:
    """Publish as the site's agent (its own broker user, ``user_id`` set as the relay does), or
    as the broker's administrator when ``site`` is None."""
    url = amqp_url if site is None else agent_url(amqp_url, site)
    user_id = None if site is None else site["user"]
    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await find_events_exchange(channel)
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(body, delivery_mode=2, user_id=user_id), key, timeout=30
                )
                for key, body in items
            )
        )


async def publish(amqp_url: str, site: dict[str, Any] | None, key: str, body: bytes) -> None:
    await publish_many(amqp_url, site, [(key, body)])


async def dead_letters(
    amqp_url: str,
    expect: int,
    timeout_s: float = 20,
    queue: str = SEGMENTS_QUEUE.dead_letter_queue,
) -> list[dict[str, Any]]:
    """Drain a DLQ until ``expect`` messages arrived; return their reasons and bodies."""
    got: list[dict[str, Any]] = []
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        channel = await conn.channel()
        dlq = await channel.get_queue(queue)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(got) < expect and asyncio.get_running_loop().time() < deadline:
            msg = await dlq.get(fail=False)
            if msg is None:
                await asyncio.sleep(0.2)
                continue
            await msg.ack()
            got.append({"reason": msg.headers.get("x-gtvision-reason"), "body": msg.body})
    return got


async def segment_count(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        n: int = await conn.fetchval("SELECT count(*) FROM segments")
        return n


async def wait_for_count(pool: asyncpg.Pool, n: int, timeout_s: float = 20) -> int:
    for _ in range(int(timeout_s * 10)):
        if await segment_count(pool) >= n:
            break
        await asyncio.sleep(0.1)
    return await segment_count(pool)


async def test_redelivered_segment_is_stored_once(
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    amqp_url: str,
    broker_admin: BrokerAdmin,
) -> None:
    site = await make_city(db_pool, broker_admin, "Campinas")
    msg = upload_segment(s3_client, site, b"\x00\x00\x00\x18ftypmp42" * 100)
    key = routing_key("segment", site["city"], site["agent"])
    for _ in range(3):  # at-least-once: the same message may arrive many times
        await publish(amqp_url, site, key, encode(msg))
    assert await wait_for_count(db_pool, 1) == 1
    await asyncio.sleep(1.0)  # give any duplicate time to (wrongly) land
    assert await segment_count(db_pool) == 1


async def test_poison_messages_dead_lettered_with_reason(
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    amqp_url: str,
    broker_admin: BrokerAdmin,
) -> None:
    city_a = await make_city(db_pool, broker_admin, "Santos")
    city_b = await make_city(db_pool, broker_admin, "Sorocaba")
    good = upload_segment(s3_client, city_a, b"good-bytes" * 50)
    key_a = routing_key("segment", city_a["city"], city_a["agent"])
    key_b = routing_key("segment", city_b["city"], city_b["agent"])

    # 1. not JSON; 2. agent B publishing city A's camera under its own key (cross-city write);
    # 3. the body claims agent A but the routing key (the publisher) is agent B;
    # 4. a publisher that is not the agent's broker user (no validated user_id).
    # (A blob whose bytes differ from the claim is retried, then dead-lettered by the delivery
    # limit: slower, so it has its own test.)
    forged = good.model_copy(update={"agent_id": city_b["agent"]})
    await publish(amqp_url, city_a, key_a, b"{not json")
    await publish(amqp_url, city_b, key_b, encode(forged))
    await publish(amqp_url, city_b, key_b, encode(good))
    await publish(amqp_url, None, key_a, encode(good))
    letters = await dead_letters(amqp_url, expect=4)
    reasons = sorted(str(m["reason"]) for m in letters)
    assert len(letters) == 4, reasons
    assert any("invalid segment" in r for r in reasons), reasons
    assert any("not in agent" in r for r in reasons), reasons
    assert any("routing key" in r for r in reasons), reasons
    assert any("publisher" in r for r in reasons), reasons
    assert await segment_count(db_pool) == 0

    # The queue is not blocked: a good message behind the poison still lands.
    await publish(amqp_url, city_a, key_a, encode(good))
    assert await wait_for_count(db_pool, 1) == 1


async def test_blob_that_does_not_match_claim_is_never_stored(
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    amqp_url: str,
    broker_admin: BrokerAdmin,
) -> None:
    site = await make_city(db_pool, broker_admin, "Jundiaí")
    msg = upload_segment(s3_client, site, b"original" * 64)
    s3_client.put_object(
        "recordings", msg.blob.key, io.BytesIO(b"tampered" * 64), len(b"tampered" * 64)
    )
    key = routing_key("segment", site["city"], site["agent"])
    await publish(amqp_url, site, key, encode(msg))
    # Retried until the delivery limit, then dead-lettered; never referenced by a row.
    letters = await dead_letters(amqp_url, expect=1, timeout_s=40)
    assert len(letters) == 1
    assert await segment_count(db_pool) == 0


def plate_read(site: dict[str, Any], plate: str = "BRA2E19") -> PlateRead:
    return PlateRead(
        read_id=uuid.uuid4(), agent_id=site["agent"], camera_id=site["camera"], plate=plate,
        confidence=0.937, seen_ms=1_700_000_000_000,
    )  # fmt: skip


async def lpr_count(pool: asyncpg.Pool, camera: uuid.UUID) -> int:
    async with pool.acquire() as conn:
        return await plates.count_reads(conn, camera)


async def test_plate_reads_batched_idempotent_and_scoped(
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    amqp_url: str,
    broker_admin: BrokerAdmin,
) -> None:
    site = await make_city(db_pool, broker_admin, "Ribeirão Preto")
    other = await make_city(db_pool, broker_admin, "Bauru")
    reads = [plate_read(site, f"ABC{n:04d}") for n in range(1200)]
    key = routing_key("plate_read", site["city"], site["agent"])
    items = [(key, encode(r)) for r in reads]
    items += items[:300]  # redeliveries of the first 300
    # Agent of another city sending a read for this city's camera, under its own key.
    await publish_many(amqp_url, site, items)
    forged = plate_read(site).model_copy(update={"agent_id": other["agent"]})
    key_other = routing_key("plate_read", other["city"], other["agent"])
    await publish(amqp_url, other, key_other, encode(forged))

    for _ in range(200):
        if await lpr_count(db_pool, site["camera"]) >= len(reads):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # any duplicate would land by now
    assert await lpr_count(db_pool, site["camera"]) == len(reads)
    async with db_pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT plate, confidence, city_id FROM lpr_events WHERE id = $1", reads[7].read_id
        )
    assert row is not None
    assert (row["plate"], float(row["confidence"]), row["city_id"]) == (
        "ABC0007",
        0.94,
        site["city"],
    )
    letters = await dead_letters(amqp_url, expect=1, queue=PLATES_QUEUE.dead_letter_queue)
    assert len(letters) == 1 and "not in agent" in str(letters[0]["reason"])


async def test_thumbnails_newest_wins_and_replaced_objects_go(
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    amqp_url: str,
    broker_admin: BrokerAdmin,
) -> None:
    site = await make_city(db_pool, broker_admin, "Marília")
    key = routing_key("thumbnail", site["city"], site["agent"])

    def upload(taken_ms: int) -> ThumbnailTaken:
        thumb_id = uuid.uuid4()
        obj = storage.thumbnail_key(site["city"], site["camera"], thumb_id)
        data = f"jpeg-{taken_ms}".encode() * 10
        s3_client.put_object("thumbnails", obj, io.BytesIO(data), len(data))
        return ThumbnailTaken(
            thumbnail_id=thumb_id, agent_id=site["agent"], camera_id=site["camera"],
            taken_ms=taken_ms,
            blob=BlobRef(bucket="thumbnails", key=obj, size_bytes=len(data),
                         sha256=hashlib.sha256(data).hexdigest()),
        )  # fmt: skip

    async def current() -> str | None:
        async with db_pool.acquire() as conn:
            key_now: str | None = await conn.fetchval(
                "SELECT thumbnail_key FROM cameras WHERE id = $1", site["camera"]
            )
            return key_now

    def exists(obj: str) -> bool:
        try:
            s3_client.stat_object("thumbnails", obj)
            return True
        except S3Error:
            return False

    first, newer, older = upload(1000), upload(3000), upload(2000)
    for thumb in (first, newer, older, newer):  # out of order, and a redelivery
        await publish(amqp_url, site, key, encode(thumb))
        for _ in range(100):
            if not exists(thumb.blob.key) or await current() in (thumb.blob.key, newer.blob.key):
                break
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert await current() == newer.blob.key
    assert exists(newer.blob.key)
    assert not exists(first.blob.key), "the replaced thumbnail was not deleted"
    assert not exists(older.blob.key), "a stale thumbnail was kept"


async def once_and_foreign_dead_lettered(
    db_pool: asyncpg.Pool,
    amqp_url: str,
    site: dict[str, Any],
    kind: str,
    message: Any,
    foreign: Any,
    table: str,
    dlq: str,
) -> asyncpg.Record:
    """Publish ``message`` twice (at-least-once: the relay may send it again after a crash)
    and ``foreign`` (the site's agent naming another city's camera, under its own key); the
    one row stored and the single dead letter saying why are checked; returns the row."""
    key = routing_key(kind, site["city"], site["agent"])
    for body in (message, message, foreign):
        await publish(amqp_url, site, key, encode(body))

    async def rows() -> list[asyncpg.Record]:
        async with db_pool.acquire() as conn:
            return list(await conn.fetch(f"SELECT * FROM {table}"))  # noqa: S608 - fixed names

    for _ in range(100):
        if await rows():
            break
        await asyncio.sleep(0.1)
    letters = await dead_letters(amqp_url, expect=1, queue=dlq)
    await asyncio.sleep(0.5)  # a duplicate would have landed by now
    (row,) = await rows()
    assert len(letters) == 1 and "not in agent" in str(letters[0]["reason"]), letters
    return row


async def test_loss_event_stored_once_and_foreign_camera_dead_lettered(
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    amqp_url: str,
    broker_admin: BrokerAdmin,
) -> None:
    site = await make_city(db_pool, broker_admin, "Piracicaba")
    other = await make_city(db_pool, broker_admin, "Limeira")
    loss = LossEvent(
        loss_id=uuid.uuid4(), agent_id=site["agent"], camera_id=site["camera"],
        start_ms=1_700_000_000_000, end_ms=1_700_000_006_000, segments=3,
        size_bytes=912_345, reason="disk_budget",
    )  # fmt: skip
    foreign = loss.model_copy(update={"loss_id": uuid.uuid4(), "camera_id": other["camera"]})
    row = await once_and_foreign_dead_lettered(
        db_pool, amqp_url, site, "loss_event", loss, foreign, "loss_events",
        LOSSES_QUEUE.dead_letter_queue,
    )  # fmt: skip
    assert (row["id"], row["agent_id"], row["camera_id"], row["cidade_id"]) == (
        loss.loss_id, site["agent"], site["camera"], site["city"],
    )  # fmt: skip
    assert int(row["start_time"].timestamp() * 1000) == loss.start_ms
    assert int(row["end_time"].timestamp() * 1000) == loss.end_ms
    assert (row["segments"], row["size_bytes"], row["reason"]) == (3, 912_345, "disk_budget")


async def test_watchlist_alert_stored_once_and_foreign_camera_dead_lettered(
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    amqp_url: str,
    broker_admin: BrokerAdmin,
) -> None:
    site = await make_city(db_pool, broker_admin, "Americana")
    other = await make_city(db_pool, broker_admin, "Sumaré")
    alert = WatchlistAlert(
        alert_id=uuid.uuid4(), agent_id=site["agent"], camera_id=site["camera"],
        read_id=uuid.uuid4(), plate="BRA2E19", listed_plate="BRA2E19", match="exact",
        confidence=0.93, detected_ms=1_700_000_000_000,
    )  # fmt: skip
    foreign = alert.model_copy(update={"alert_id": uuid.uuid4(), "camera_id": other["camera"]})
    row = await once_and_foreign_dead_lettered(
        db_pool, amqp_url, site, "watchlist_alert", alert, foreign, "alerts",
        ALERTS_QUEUE.dead_letter_queue,
    )  # fmt: skip
    assert (row["id"], row["cidade_id"], row["camera_id"], row["read_id"]) == (
        alert.alert_id, site["city"], site["camera"], alert.read_id,
    )  # fmt: skip
    assert (row["plate"], row["listed_plate"], row["match"]) == ("BRA2E19", "BRA2E19", "exact")
    assert int(row["detected_at"].timestamp() * 1000) == alert.detected_ms
