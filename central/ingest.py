"""Central's RabbitMQ consumers: validate what agents send, verify blobs, write idempotently.

At-least-once delivery, exactly-once effect: every write is keyed by the message's natural key
(``ON CONFLICT DO NOTHING``), so a redelivery is harmless. Poison messages are dead-lettered with
a reason and never block the queue. Consumers hold no state between batches: run as many
processes as needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar
from uuid import UUID

import aio_pika
import asyncpg
import redis.asyncio as aioredis
import urllib3
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from minio import Minio

from central import (
    agents,
    alerts,
    cameras,
    crops,
    losses,
    plates,
    presence,
    recordings,
    segments,
    storage,
)
from central.startup import until_up
from shared.messages import (
    BlobRef,
    Heartbeat,
    LossEvent,
    Message,
    MessageRejected,
    PlateCrop,
    PlateRead,
    PlateReadBatch,
    SegmentRecorded,
    ThumbnailTaken,
    WatchlistAlert,
    decode,
    encode,
)
from shared.topology import (
    ALERTS_QUEUE,
    CROPS_QUEUE,
    DEAD_LETTER_EXCHANGE,
    HEARTBEATS_QUEUE,
    LOSSES_QUEUE,
    PLATES_QUEUE,
    SEGMENTS_QUEUE,
    THUMBNAILS_QUEUE,
    ConsumerQueue,
    agent_user,
    declare_topology,
    parse_routing_key,
)

log = logging.getLogger(__name__)

RETRY_DELAY_S = 1.0
# While PostgreSQL or S3 is unreachable, how long a held delivery waits between checks (at most).
OUTAGE_CHECK_MAX_S = 30.0
# Failures that heal by themselves: the database or object storage is down or restarting.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    urllib3.exceptions.HTTPError,  # the minio SDK's "connection refused" after its retries
)


class Poison(Exception):
    """A message that can never succeed; its text goes with it to the dead-letter queue."""


async def verify_claim(s3: Minio, blob: BlobRef, bucket: str, key: str) -> None:
    """A claim-check must name the object central granted, and the object must hold exactly
    the claimed bytes: Poison for a wrong key, BlobMismatch (retried) for wrong content."""
    if blob.bucket != bucket or blob.key != key:
        raise Poison(f"blob {blob.bucket}/{blob.key} is not {bucket}/{key}")
    await asyncio.to_thread(storage.verify_blob, s3, bucket, key, blob.size_bytes, blob.sha256)


class Consumer:
    """Common part of the consumers: the envelope checks and dead-lettering."""

    queue: ConsumerQueue
    prefetch: int

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.inserted = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self._dlx: AbstractExchange | None = None

    async def start(self, channel: AbstractChannel) -> None:
        """Declare the topology and consume on ``channel`` (opened with publisher confirms)."""
        await channel.set_qos(prefetch_count=self.prefetch)
        await declare_topology(channel)
        self._dlx = await channel.get_exchange(DEAD_LETTER_EXCHANGE)
        queue = await channel.get_queue(self.queue.name)
        await queue.consume(self.handle)
        log.info("consuming %s", self.queue.name)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Process one delivery and ack it; the failure policy is the same for every queue:
        poison is dead-lettered with its reason, anything that may heal is retried (the
        queue's delivery limit bounds the retries)."""
        try:
            await self.process(message)
            await message.ack()
        except (Poison, MessageRejected) as exc:
            await self.dead_letter(message, str(exc))
        except storage.BlobMismatch as exc:
            # The upload may still be settling or be re-sent to the same key.
            await self._retry(message, f"blob not verified ({exc})")
        except TRANSIENT_ERRORS as exc:
            await self._retry(message, f"transient failure ({exc!r})", outage=True)
        except Exception as exc:
            # Never leave a delivery unsettled (it would sit unacked until the connection
            # closes); the delivery limit dead-letters it if it keeps failing.
            log.exception("%s: unexpected error", self.queue.name)
            await self._retry(message, f"unexpected error ({exc!r})")

    async def process(self, message: AbstractIncomingMessage) -> None:
        """Validate and store one message; raise Poison, BlobMismatch or a transient error."""
        raise NotImplementedError

    async def _retry(
        self, message: AbstractIncomingMessage, why: str, *, outage: bool = False
    ) -> None:
        log.warning("%s: %s; will retry", self.queue.name, why)
        await asyncio.sleep(RETRY_DELAY_S)
        if outage:
            await self.wait_until_reachable()
        await message.nack(requeue=True)

    async def reachable(self) -> None:
        """Raise unless PostgreSQL (and S3, for consumers that verify blobs) answers."""
        async with self.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        s3 = getattr(self, "s3", None)
        if isinstance(s3, Minio):
            await asyncio.to_thread(s3.bucket_exists, "recordings")

    async def wait_until_reachable(self) -> None:
        """Hold a failed delivery (backing off) until the database and object storage answer
        again, so an outage costs it one redelivery, not one per second: the queue's delivery
        limit is for poison, and a restart of PostgreSQL or S3 must not dead-letter good
        messages."""
        delay = RETRY_DELAY_S
        while True:
            try:
                await self.reachable()
                return
            except TRANSIENT_ERRORS as exc:
                log.warning("%s: still unreachable (%r); next check in %.0f s",
                            self.queue.name, exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, OUTAGE_CHECK_MAX_S)

    async def check_camera(self, agent_id: UUID, camera_id: UUID, city: UUID) -> None:
        """Poison unless the agent is active in ``city`` and the camera is that city's."""
        async with self.pool.acquire() as conn:
            if await agents.agent_city(conn, agent_id) != city:
                raise Poison(f"agent {agent_id} is unknown, revoked or not of city {city}")
            if await cameras.camera_city_for_agent(conn, camera_id, agent_id) != city:
                raise Poison(f"camera {camera_id} is not in agent {agent_id}'s city")

    def envelope(self, message: AbstractIncomingMessage) -> tuple[Message, UUID]:
        """Decode a body and check it against its routing key; returns it and its city.

        The routing key names the publishing agent (per-agent broker permissions pin it), so a
        body claiming another agent is forged.
        """
        try:
            kind, city, agent = parse_routing_key(message.routing_key or "")
            city_id = UUID(city)
        except ValueError as exc:
            raise Poison(str(exc)) from None
        if kind not in self.queue.message_types:
            raise Poison(f"{kind} message on {self.queue.name}")
        msg = decode(message.body, kind)
        if str(msg.agent_id) != agent:
            raise Poison(f"agent {msg.agent_id} published under agent {agent}'s routing key")
        # RabbitMQ refuses a user_id that is not the connection's user, so this names the
        # publisher for certain: only the agent's own broker user may speak for it.
        if message.user_id != agent_user(msg.agent_id):
            raise Poison(
                f"publisher {message.user_id or '(no user_id)'} is not {agent_user(msg.agent_id)}"
            )
        return msg, city_id

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Publish a copy with the reason to the DLX (confirmed), then ack the original."""
        await self.publish_dead_letter(message, reason)
        await message.ack()

    async def publish_dead_letter(
        self,
        message: AbstractIncomingMessage,
        reason: str,
        body: bytes | None = None,
        key: str | None = None,
    ) -> None:
        """Publish ``body`` (default: the message's) with the reason to the DLX, confirmed.
        The caller settles the original delivery."""
        assert self._dlx is not None
        log.error("dead-lettering message %s: %s", message.message_id, reason)
        await self._dlx.publish(
            aio_pika.Message(
                message.body if body is None else body,
                content_type=message.content_type,
                message_id=message.message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={"x-gtvision-reason": reason[:1000]},
            ),
            routing_key=key or message.routing_key or "v1.unknown",
            timeout=10,
        )
        self.dead_lettered += 1


class Claim(Protocol):
    """A message naming an object one of the agent's cameras uploaded."""

    @property
    def agent_id(self) -> UUID: ...
    @property
    def camera_id(self) -> UUID: ...
    @property
    def blob(self) -> BlobRef: ...


ClaimT = TypeVar("ClaimT", bound=Claim)


class BlobConsumer(Consumer):
    """A consumer of claim-checks: its messages name objects it verifies in S3."""

    upload_kind: str  # storage.UPLOAD_KINDS: the bucket and key a claim must name

    def __init__(self, pool: asyncpg.Pool, s3: Minio) -> None:
        super().__init__(pool)
        self.s3 = s3

    async def verified(
        self,
        message: AbstractIncomingMessage,
        kind: type[ClaimT],
        object_id: Callable[[ClaimT], UUID],
    ) -> tuple[ClaimT, UUID, str]:
        """The message, its city and its object's key, once the envelope, the camera and the
        object (at the key central would have granted, with the claimed size and SHA-256)
        are checked."""
        msg, city = self.envelope(message)
        assert isinstance(msg, kind)
        await self.check_camera(msg.agent_id, msg.camera_id, city)
        expected = await self.check_claim(self.upload_kind, msg.blob, city, msg.camera_id,
                                          object_id(msg))  # fmt: skip
        return msg, city, expected

    async def check_claim(
        self, upload_kind: str, blob: BlobRef, city: UUID, camera_id: UUID, object_id: UUID
    ) -> str:
        """Verify a blob at the key central grants for this kind and object; returns the key."""
        bucket, key_of = storage.UPLOAD_KINDS[upload_kind]
        expected = key_of(city, camera_id, object_id)
        await verify_claim(self.s3, blob, bucket, expected)
        return expected


class SegmentConsumer(BlobConsumer):
    """Consumes ``central.segments`` one message at a time: each needs its blob verified."""

    queue = SEGMENTS_QUEUE
    upload_kind = "segment"
    prefetch = 16

    async def process(self, message: AbstractIncomingMessage) -> None:
        seg, _, _ = await self.verified(message, SegmentRecorded, lambda m: m.segment_id)
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await segments.insert_segments(conn, [seg])
            # The run's recording counts the segment in the same commit (central/recordings.py).
            await recordings.record_segments(conn, [seg.segment_id])
        self.inserted += inserted
        self.duplicates += 1 - inserted
        log.debug("segment=%s camera=%s stored", seg.segment_id, seg.camera_id)


class PlateConsumer(Consumer):
    """Consumes ``central.plates`` in batches: one transaction per batch, then the acks."""

    queue = PLATES_QUEUE
    prefetch = 1000
    batch_size = 500
    linger_s = 0.02  # how long a partial batch waits for company

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self._pending: list[AbstractIncomingMessage] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    async def start(self, channel: AbstractChannel) -> None:
        self._flusher = asyncio.create_task(self._flush_loop(), name="plates-flusher")
        await super().start(channel)

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher

    async def handle(self, message: AbstractIncomingMessage) -> None:
        self._pending.append(message)
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.linger_s)
            self._wake.clear()
            while self._pending:
                batch, self._pending = (
                    self._pending[: self.batch_size],
                    self._pending[self.batch_size :],
                )
                await self._process(batch)

    async def _process(self, batch: Sequence[AbstractIncomingMessage]) -> None:
        """Store a batch of deliveries (each a PlateRead or a PlateReadBatch) in one
        transaction, then ack them all with one ``multiple`` ack."""
        valid: list[tuple[AbstractIncomingMessage, list[PlateRead], UUID]] = []
        for message in batch:
            try:
                msg, city = self.envelope(message)
                assert isinstance(msg, PlateRead | PlateReadBatch)
                valid.append((message, list(msg.reads) if isinstance(msg, PlateReadBatch)
                              else [msg], city))  # fmt: skip
            except (Poison, MessageRejected) as exc:
                await self.dead_letter(message, str(exc))
        if not valid:
            return
        # Per delivery: the reads whose camera is not in the agent's city.
        rejected: list[tuple[AbstractIncomingMessage, list[PlateRead], bool, UUID]] = []
        accepted: list[PlateRead] = []
        try:
            async with self.pool.acquire() as conn:
                owned = await self._owned_cameras(conn, valid)
                for message, reads, city in valid:
                    bad = [r for r in reads if owned.get((r.agent_id, r.camera_id)) != city]
                    accepted.extend(
                        r for r in reads if owned.get((r.agent_id, r.camera_id)) == city
                    )
                    if bad:
                        rejected.append((message, bad, len(bad) == len(reads), city))
                city_of = {read.camera_id: city for (_, reads, city) in valid for read in reads}
                async with conn.transaction():
                    inserted = await plates.insert_reads(conn, accepted, city_of)
        except TRANSIENT_ERRORS as exc:
            log.warning(
                "transient failure storing %d plate deliveries (%r); will retry", len(valid), exc
            )
            await asyncio.sleep(RETRY_DELAY_S)
            await self.wait_until_reachable()
            for message, _, _ in valid:
                await message.nack(requeue=True)
            return
        settled: set[int] = set()
        for message, bad, whole, city in rejected:
            reason = (
                f"camera {bad[0].camera_id} is not in agent {bad[0].agent_id}'s city {city}"
                " (or the agent is unknown or revoked)"
            )
            if whole:
                await self.dead_letter(message, reason)  # acks it
                settled.add(id(message))
            else:
                # Only the refused reads of a batch go to the DLQ; the rest are stored and the
                # delivery is acked below with the others.
                await self.publish_dead_letter(
                    message, reason, _reads_body(bad), _key_of(message, bad)
                )
        # After the commit: a crash before this ack redelivers, and the read_id absorbs it.
        # Deliveries are handled in order, so every unsettled one up to the last of this batch
        # is in it: one ack with ``multiple`` settles them all.
        to_ack = [m for m, _, _ in valid if id(m) not in settled]
        if to_ack:
            await max(to_ack, key=lambda m: m.delivery_tag or 0).ack(multiple=True)
        self.inserted += inserted
        self.duplicates += len(accepted) - inserted

    @staticmethod
    async def _owned_cameras(
        conn: asyncpg.Connection,
        valid: Sequence[tuple[AbstractIncomingMessage, list[PlateRead], UUID]],
    ) -> dict[tuple[UUID, UUID], UUID]:
        """(agent, camera) -> city, for the pairs where the camera is in the agent's city."""
        pairs = {(read.agent_id, read.camera_id) for _, reads, _ in valid for read in reads}
        rows = await conn.fetch(
            """
            SELECT a.id AS agent_id, c.id AS camera_id, c.cidade_id
            FROM unnest($1::uuid[], $2::uuid[]) AS p(agent_id, camera_id)
            JOIN agents a ON a.id = p.agent_id AND a.is_active
            JOIN cameras c ON c.id = p.camera_id AND c.cidade_id = a.cidade_id
            """,
            [a for a, _ in pairs],
            [c for _, c in pairs],
        )
        return {(r["agent_id"], r["camera_id"]): r["cidade_id"] for r in rows}


def _reads_body(reads: list[PlateRead]) -> bytes:
    """The wire body of some reads of one agent: the read alone, or a batch of them."""
    if len(reads) == 1:
        return encode(reads[0])
    return encode(PlateReadBatch(agent_id=reads[0].agent_id, reads=reads))


def _key_of(message: AbstractIncomingMessage, reads: list[PlateRead]) -> str:
    """``message``'s routing key for the type of ``_reads_body(reads)``."""
    kind = "plate_read" if len(reads) == 1 else "plate_read_batch"
    _, city, agent = parse_routing_key(message.routing_key or "")
    return f"v1.{kind}.{city}.{agent}"


class ThumbnailConsumer(BlobConsumer):
    """Consumes ``central.thumbnails``: each camera points at its newest thumbnail, and the
    object it replaces is deleted (mosaics need only the current view)."""

    queue = THUMBNAILS_QUEUE
    upload_kind = "thumbnail"
    prefetch = 16

    async def process(self, message: AbstractIncomingMessage) -> None:
        thumb, _, expected = await self.verified(message, ThumbnailTaken, lambda m: m.thumbnail_id)
        async with self.pool.acquire() as conn, conn.transaction():
            applied, previous, current = await cameras.set_thumbnail(
                conn, thumb.camera_id, expected, segments.ms_to_dt(thumb.taken_ms)
            )
        # Delete what no row points at: the replaced thumbnail, or this one if it arrived
        # after a newer one (a redelivery of the current one is left alone).
        obsolete = previous if applied else expected
        if obsolete is not None and obsolete != current:
            await asyncio.to_thread(self.s3.remove_object, "thumbnails", obsolete)
        self.inserted += int(applied)


class CropConsumer(BlobConsumer):
    """Consumes ``central.crops``: plate reads' evidence JPEGs, verified against their
    claim-check and kept under the read's id (``lpr_crops``), whether the read is here yet or
    not. Keyed by ``read_id``."""

    queue = CROPS_QUEUE
    upload_kind = "crop"
    prefetch = 16

    async def process(self, message: AbstractIncomingMessage) -> None:
        crop, city, _ = await self.verified(message, PlateCrop, lambda m: m.read_id)
        if crop.context is not None:  # the context frame is verified the same way
            await self.check_claim("context", crop.context, city, crop.camera_id, crop.read_id)
        async with self.pool.acquire() as conn:
            inserted = await crops.insert_crop(conn, crop)
        self.inserted += int(inserted)
        self.duplicates += int(not inserted)
        log.debug("crop of read=%s camera=%s stored", crop.read_id, crop.camera_id)


class HeartbeatConsumer(Consumer):
    """Consumes ``central.heartbeats``: the newest heartbeat per agent wins."""

    queue = HEARTBEATS_QUEUE
    prefetch = 100

    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis | None) -> None:
        super().__init__(pool)
        self.redis = redis

    async def process(self, message: AbstractIncomingMessage) -> None:
        hb, city = self.envelope(message)
        assert isinstance(hb, Heartbeat)
        async with self.pool.acquire() as conn:
            if await agents.agent_city(conn, hb.agent_id) != city:
                raise Poison(f"agent {hb.agent_id} is unknown, revoked or not of city {city}")
            newest = await presence.record_heartbeat(conn, self.redis, hb)
        self.inserted += int(newest)


class LossConsumer(Consumer):
    """Consumes ``central.losses``: video an agent recorded but will never deliver (evicted
    unsynced under its disk budget, or its file vanished). Keyed by ``loss_id``."""

    queue = LOSSES_QUEUE
    prefetch = 16

    async def process(self, message: AbstractIncomingMessage) -> None:
        loss, city = self.envelope(message)
        assert isinstance(loss, LossEvent)
        await self.check_camera(loss.agent_id, loss.camera_id, city)
        async with self.pool.acquire() as conn:
            inserted = await losses.insert_loss(conn, loss, city)
        self.inserted += int(inserted)
        self.duplicates += int(not inserted)
        log.warning(
            "agent %s lost %d segment(s) of camera %s (%s)%s",
            loss.agent_id, loss.segments, loss.camera_id, loss.reason,
            "" if inserted else " (duplicate)",
        )  # fmt: skip


class AlertConsumer(Consumer):
    """Consumes ``central.alerts``: watchlist matches the agents raised (offline too), keyed by
    ``alert_id``. The alert is stored even when its plate read has not arrived yet (reads
    travel on their own queue): ``read_id`` links them once it does."""

    queue = ALERTS_QUEUE
    prefetch = 16

    async def process(self, message: AbstractIncomingMessage) -> None:
        alert, city = self.envelope(message)
        assert isinstance(alert, WatchlistAlert)
        await self.check_camera(alert.agent_id, alert.camera_id, city)
        row = {
            "id": alert.alert_id, "cidade_id": city, "camera_id": alert.camera_id,
            "agent_id": alert.agent_id, "read_id": alert.read_id, "plate": alert.plate,
            "listed_plate": alert.listed_plate, "match": alert.match,
            "detected_at": segments.ms_to_dt(alert.detected_ms),
        }  # fmt: skip
        async with self.pool.acquire() as conn:
            inserted = await alerts.insert_alerts(conn, [row])
        self.inserted += inserted
        self.duplicates += int(not inserted)
        if inserted:
            log.warning(
                "ALERT %s match: plate %s (listed %s) on camera %s of city %s",
                alert.match, alert.plate, alert.listed_plate, alert.camera_id, city,
            )  # fmt: skip


async def run_ingest(
    amqp_url: str,
    pool: asyncpg.Pool,
    s3: Minio,
    stop: asyncio.Event,
    redis: aioredis.Redis | None = None,
) -> list[Consumer]:
    """Run every consumer until ``stop`` is set. Waits for the broker at start
    (central/startup.py), then reconnects by itself (robust connection)."""
    connection = await until_up(
        "RabbitMQ", lambda: aio_pika.connect_robust(amqp_url, heartbeat=10, timeout=10), stop
    )
    if connection is None:
        return []
    plate_consumer = PlateConsumer(pool)
    consumers: list[Consumer] = [
        SegmentConsumer(pool, s3),
        plate_consumer,
        HeartbeatConsumer(pool, redis),
        ThumbnailConsumer(pool, s3),
        LossConsumer(pool),
        AlertConsumer(pool),
        CropConsumer(pool, s3),
    ]
    try:
        for consumer in consumers:
            # One channel per consumer: prefetch and acks stay independent.
            channel = await connection.channel(publisher_confirms=True)
            await consumer.start(channel)
        await stop.wait()
        return consumers
    finally:
        await plate_consumer.stop()
        await connection.close()
