"""The RabbitMQ topology, declared by one function that agent and central both call."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

EVENTS_EXCHANGE = "gtvision.events"  # topic: agents publish here
DEAD_LETTER_EXCHANGE = "gtvision.dlx"  # topic: rejected/poison messages land here
# A message redelivered more often than this is poison: the quorum queue dead-letters it.
DELIVERY_LIMIT = 5


@dataclass(frozen=True)
class ConsumerQueue:
    """A central consumer's quorum queue, the message types bound to it, and its DLQ."""

    name: str
    message_types: tuple[str, ...]

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dlq"


SEGMENTS_QUEUE = ConsumerQueue("central.segments", ("segment",))
PLATES_QUEUE = ConsumerQueue("central.plates", ("plate_read",))
CONSUMER_QUEUES = (SEGMENTS_QUEUE, PLATES_QUEUE)


def routing_key(message_type: str, city_id: UUID, agent_id: UUID) -> str:
    """``v1.<type>.<city>.<agent>``: type first so consumers bind by type, agent last so
    per-agent topic permissions can pin the suffix."""
    return f"v1.{message_type}.{city_id}.{agent_id}"


def parse_routing_key(key: str) -> tuple[str, str, str]:
    """(type, city_id, agent_id) from a routing key; ValueError if it is not one of ours."""
    parts = key.split(".")
    if len(parts) != 4 or parts[0] != "v1":
        raise ValueError(f"not a v1 routing key: {key!r}")
    return parts[1], parts[2], parts[3]


async def declare_topology(channel: AbstractChannel) -> AbstractExchange:
    """Declare exchanges, quorum queues with delivery limits, DLX and DLQs. Idempotent.

    Returns the events exchange that agents publish to.
    """
    events = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dlx = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    for consumer in CONSUMER_QUEUES:
        dlq = await channel.declare_queue(
            consumer.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        queue = await channel.declare_queue(
            consumer.name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                # RabbitMQ 3.10 has no default limit: without it a poison message loops forever.
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                # Quorum queues lose no dead letters with at-least-once dead-lettering,
                # which requires reject-publish overflow.
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        for message_type in consumer.message_types:
            await queue.bind(events, routing_key=f"v1.{message_type}.#")
            await dlq.bind(dlx, routing_key=f"v1.{message_type}.#")
    return events
