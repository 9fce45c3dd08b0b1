"""Plate reads' evidence crops at central (``PlateCrop`` on ``central.crops``), against real
RabbitMQ, PostgreSQL and S3: kept whether the read came first or not, stored once, never when
the bytes differ from the claim, dead-lettered for another city's camera, and swept with their
reads by retention."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from minio import Minio

from central import crops, retention, storage, users
from central.broker import BrokerAdmin
from shared.messages import BlobRef, PlateCrop, encode
from shared.topology import CROPS_QUEUE, routing_key
from tests.central.test_api_scoping import PASSWORD, world
from tests.central.test_ingest import (
    dead_letters,
    lpr_count,
    make_city,
    plate_read,
    publish,
    publish_many,
)
from tests.central.test_retention import NOW, exists, put
from tests.central_fixtures import CentralProcess

pytestmark = pytest.mark.timeout(120)

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8 + b"\xff\xd9"


def upload_crop(s3: Minio, site: dict[str, Any], read_id: uuid.UUID, data: bytes) -> PlateCrop:
    """Upload as the relay does (to the key central grants) and return the claim."""
    key = storage.crop_key(site["city"], site["camera"], read_id)
    s3.put_object("lpr-images", key, io.BytesIO(data), len(data))
    return PlateCrop(
        read_id=read_id, agent_id=site["agent"], camera_id=site["camera"],
        blob=BlobRef(bucket="lpr-images", key=key, size_bytes=len(data),
                     sha256=hashlib.sha256(data).hexdigest()),
    )  # fmt: skip


async def crop_rows(pool: asyncpg.Pool, read_id: uuid.UUID | None = None) -> int:
    async with pool.acquire() as conn:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM lpr_crops WHERE $1::uuid IS NULL OR read_id = $1", read_id
        )
        return n


async def test_crop_before_its_read_is_stored_once_and_served_with_it(
    central_api: CentralProcess,
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    amqp_url: str,
    broker_admin: BrokerAdmin,
) -> None:
    site = await make_city(db_pool, broker_admin, "Sorocaba")
    async with db_pool.acquire() as conn:
        await users.ensure_admin(conn, "admin@example.com", PASSWORD)
    admin = await central_api.login("admin@example.com", PASSWORD)
    read = plate_read(site)
    crop = upload_crop(s3_client, site, read.read_id, JPEG)
    # The crop first (its queue is not the reads'), three times over: at-least-once.
    key = routing_key("plate_crop", site["city"], site["agent"])
    await publish_many(amqp_url, site, [(key, encode(crop))] * 3)
    for _ in range(100):
        if await crop_rows(db_pool, read.read_id):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # a duplicate would have landed by now
    assert await crop_rows(db_pool) == 1
    detail = f"/api/plates/{read.read_id}"
    assert (await central_api.http.get(detail, headers=admin)).status_code == 404  # no read yet

    await publish(amqp_url, site, routing_key("plate_read", site["city"], site["agent"]),
                  encode(read))  # fmt: skip
    for _ in range(100):
        if await lpr_count(db_pool, site["camera"]):
            break
        await asyncio.sleep(0.1)
    resp = await central_api.http.get(detail, headers=admin)
    assert resp.status_code == 200, resp.text
    url = resp.json()["crop_url"]
    assert url, resp.json()
    async with httpx.AsyncClient() as plain:
        got = await plain.get(url)
    assert got.status_code == 200 and got.content == JPEG


async def test_crop_not_matching_its_claim_or_of_another_city_is_never_stored(
    central_ingest: asyncio.Event,
    db_pool: asyncpg.Pool,
    s3_client: Minio,
    amqp_url: str,
    broker_admin: BrokerAdmin,
) -> None:
    site = await make_city(db_pool, broker_admin, "Itu")
    other = await make_city(db_pool, broker_admin, "Salto")
    key = routing_key("plate_crop", site["city"], site["agent"])
    tampered = upload_crop(s3_client, site, uuid.uuid4(), JPEG)
    s3_client.put_object("lpr-images", tampered.blob.key, io.BytesIO(JPEG[::-1]), len(JPEG))
    # The site's agent claiming a crop of another city's camera, under its own key.
    foreign = upload_crop(s3_client, other, uuid.uuid4(), JPEG).model_copy(
        update={"agent_id": site["agent"]}
    )
    # A good crop whose context frame claims an object of another city.
    stray = upload_crop(s3_client, site, uuid.uuid4(), JPEG)
    stray_key = storage.context_key(other["city"], other["camera"], stray.read_id)
    s3_client.put_object("lpr-images", stray_key, io.BytesIO(JPEG), len(JPEG))
    stray = stray.model_copy(update={"context": stray.blob.model_copy(update={"key": stray_key})})
    await publish_many(
        amqp_url, site, [(key, encode(tampered)), (key, encode(foreign)), (key, encode(stray))]
    )
    # The foreign ones at once with their reason; the tampered one retried until the delivery
    # limit dead-letters it.
    letters = await dead_letters(
        amqp_url, expect=3, timeout_s=60, queue=CROPS_QUEUE.dead_letter_queue
    )
    assert len(letters) == 3, letters
    reasons = [str(letter["reason"]) for letter in letters]
    assert any("not in agent" in r for r in reasons), reasons
    assert {PlateCrop.model_validate_json(letter["body"]).read_id for letter in letters} == {
        tampered.read_id, foreign.read_id, stray.read_id,
    }  # fmt: skip
    assert await crop_rows(db_pool) == 0


async def test_retention_removes_expired_reads_crops_rows_and_objects(
    db_pool: asyncpg.Pool, s3_client: Minio
) -> None:
    w = await world(db_pool)  # city A keeps 15 days
    keys = {}
    async with db_pool.acquire() as conn:
        agent = await conn.fetchval("SELECT agent_id FROM cameras WHERE id = $1", w["cam_a"])
        for name, age in (("old", timedelta(days=20)), ("recent", timedelta(days=1))):
            read_id = uuid.uuid4()
            await conn.execute(
                "INSERT INTO lpr_events (id, camera_id, plate, confidence, detected_at, city_id)"
                " VALUES ($1, $2, 'BRA2E19', 0.9, $3, $4)",
                read_id, w["cam_a"], (NOW - age).replace(tzinfo=None), w["a"],
            )  # fmt: skip
            keys[name] = storage.crop_key(w["a"], w["cam_a"], read_id)
            keys[f"{name} context"] = storage.context_key(w["a"], w["cam_a"], read_id)
            put(s3_client, "lpr-images", keys[name])
            put(s3_client, "lpr-images", keys[f"{name} context"])
            blob = BlobRef(bucket="lpr-images", key=keys[name], size_bytes=10, sha256="0" * 64)
            crop = PlateCrop(
                read_id=read_id, agent_id=agent or uuid.uuid4(), camera_id=w["cam_a"],
                blob=blob, context=blob.model_copy(update={"key": keys[f"{name} context"]}),
            )  # fmt: skip
            assert await crops.insert_crop(conn, crop)
        # Crops whose read never arrived: swept by when they came, objects first.
        for name, age in (("orphan", timedelta(days=20)), ("new orphan", timedelta(days=1))):
            read_id = uuid.uuid4()
            keys[name] = storage.crop_key(w["a"], w["cam_a"], read_id)
            put(s3_client, "lpr-images", keys[name])
            blob = BlobRef(bucket="lpr-images", key=keys[name], size_bytes=10, sha256="0" * 64)
            assert await crops.insert_crop(conn, PlateCrop(
                read_id=read_id, agent_id=agent or uuid.uuid4(), camera_id=w["cam_a"], blob=blob,
            ))  # fmt: skip
            await conn.execute(
                "UPDATE lpr_crops SET received_at = $2 WHERE read_id = $1", read_id, NOW - age
            )
    report = await retention.sweep(db_pool, s3_client, now=NOW)
    assert report.plate_reads == 1 and report.orphan_crops == 1
    assert report.objects == 3  # the read's crop and context frame, the orphan crop
    assert not exists(s3_client, "lpr-images", keys["orphan"])
    assert exists(s3_client, "lpr-images", keys["new orphan"])
    assert not exists(s3_client, "lpr-images", keys["old"])
    assert not exists(s3_client, "lpr-images", keys["old context"])
    assert exists(s3_client, "lpr-images", keys["recent"])
    assert exists(s3_client, "lpr-images", keys["recent context"])
    async with db_pool.acquire() as conn:
        left = [r["object_key"] for r in await conn.fetch("SELECT object_key FROM lpr_crops")]
    assert sorted(left) == sorted([keys["recent"], keys["new orphan"]])
