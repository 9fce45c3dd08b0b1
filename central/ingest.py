"""Central's RabbitMQ consumers: validate what agents send, verify blobs, write idempotently.

At-least-once delivery, exactly-once effect: every write is keyed by the message's natural key
(``ON CONFLICT DO NOTHING``), so a redelivery is harmless. Poison messages are dead-lettered with
a reason and never block the queue.
"""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from minio import Minio

from central import agents, cameras, segments, storage
from shared.messages import MessageRejected, SegmentRecorded, decode
from shared.topology import (
    DEAD_LETTER_EXCHANGE,
    SEGMENTS_QUEUE,
    declare_topology,
    parse_routing_key,
)

log = logging.getLogger(__name__)

PREFETCH = 50
RETRY_DELAY_S = 1.0


class Poison(Exception):
    """A message that can never succeed; ``reason`` goes with it to the dead-letter queue."""


class SegmentConsumer:
    """Consumes ``central.segments``."""

    def __init__(self, pool: asyncpg.Pool, s3: Minio) -> None:
        self.pool = pool
        self.s3 = s3
        self.inserted = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self._dlx: AbstractExchange | None = None

    async def start(self, channel: AbstractChannel) -> None:
        """Declare the topology and start consuming on ``channel`` (publisher confirms on)."""
        await channel.set_qos(prefetch_count=PREFETCH)
        await declare_topology(channel)
        self._dlx = await channel.get_exchange(DEAD_LETTER_EXCHANGE)
        queue = await channel.get_queue(SEGMENTS_QUEUE.name)
        await queue.consume(self.handle)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        try:
            seg = await self._validate(message)
            await asyncio.to_thread(
                storage.verify_blob, self.s3, seg.blob.bucket, seg.blob.key,
                seg.blob.size_bytes, seg.blob.sha256,
            )  # fmt: skip
            async with self.pool.acquire() as conn:
                inserted = await segments.insert_segments(conn, [seg])
            self.inserted += inserted
            self.duplicates += 1 - inserted
            await message.ack()
            log.debug("segment=%s camera=%s stored", seg.segment_id, seg.camera_id)
        except (Poison, MessageRejected) as exc:
            await self._dead_letter(message, getattr(exc, "reason", None) or str(exc))
        except storage.BlobMismatch as exc:
            # The upload may still be settling: retry; the queue's delivery limit bounds it.
            log.warning("blob not verified (%s); will retry", exc)
            await asyncio.sleep(RETRY_DELAY_S)
            await message.nack(requeue=True)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("transient failure storing a segment (%r); will retry", exc)
            await asyncio.sleep(RETRY_DELAY_S)
            await message.nack(requeue=True)

    async def _validate(self, message: AbstractIncomingMessage) -> SegmentRecorded:
        try:
            kind, city, agent = parse_routing_key(message.routing_key or "")
        except ValueError as exc:
            raise Poison(str(exc)) from None
        seg = decode(message.body, kind)
        if not isinstance(seg, SegmentRecorded):
            raise Poison(f"{kind} message on the segments queue")
        if str(seg.agent_id) != agent:
            raise Poison(f"agent {seg.agent_id} published under agent {agent}'s routing key")
        async with self.pool.acquire() as conn:
            agent_city = await agents.agent_city(conn, seg.agent_id)
            if agent_city is None or str(agent_city) != city:
                raise Poison(f"agent {seg.agent_id} is unknown, revoked or not of city {city}")
            if await cameras.camera_city_for_agent(conn, seg.camera_id, seg.agent_id) is None:
                raise Poison(f"camera {seg.camera_id} is not in agent {seg.agent_id}'s city")
        expected = storage.segment_key(UUID(city), seg.camera_id, seg.segment_id)
        if seg.blob.bucket != "recordings" or seg.blob.key != expected:
            raise Poison(f"blob {seg.blob.bucket}/{seg.blob.key} is not {expected}")
        return seg

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Publish a copy with the reason to the DLX (confirmed), then ack the original."""
        assert self._dlx is not None
        log.error("dead-lettering message %s: %s", message.message_id, reason)
        await self._dlx.publish(
            aio_pika.Message(
                message.body,
                content_type=message.content_type,
                message_id=message.message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={"x-gtvision-reason": reason[:1000]},
            ),
            routing_key=message.routing_key or "v1.unknown",
            timeout=10,
        )
        await message.ack()
        self.dead_lettered += 1


async def run_ingest(
    amqp_url: str, pool: asyncpg.Pool, s3: Minio, stop: asyncio.Event
) -> SegmentConsumer:
    """Consume until ``stop`` is set. Reconnects by itself (robust connection)."""
    connection = await aio_pika.connect_robust(amqp_url, heartbeat=10, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=False)
        consumer = SegmentConsumer(pool, s3)
        await consumer.start(channel)
        log.info("ingest consuming %s", SEGMENTS_QUEUE.name)
        await stop.wait()
        return consumer
    finally:
        await connection.close()
