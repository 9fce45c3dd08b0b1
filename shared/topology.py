"""The RabbitMQ topology, declared by one function that agent and central both call."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange
from pamqp.common import FieldTable

EVENTS_EXCHANGE = "gtvision.events"  # topic: agents publish here
DEAD_LETTER_EXCHANGE = "gtvision.dlx"  # topic: rejected/poison messages land here
# A message redelivered more often than this is poison: the quorum queue dead-letters it.
DELIVERY_LIMIT = 5


@dataclass(frozen=True)
class ConsumerQueue:
    """A central consumer's quorum queue, the message types bound to it, and its DLQ."""

    name: str
    message_types: tuple[str, ...]
    # For state that a newer message replaces (heartbeats): drop what waited longer than this.
    message_ttl_ms: int | None = None

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dlq"


SEGMENTS_QUEUE = ConsumerQueue("central.segments", ("segment",))
PLATES_QUEUE = ConsumerQueue("central.plates", ("plate_read", "plate_read_batch"))
HEARTBEATS_QUEUE = ConsumerQueue("central.heartbeats", ("heartbeat",), message_ttl_ms=120_000)
THUMBNAILS_QUEUE = ConsumerQueue("central.thumbnails", ("thumbnail",), message_ttl_ms=600_000)
LOSSES_QUEUE = ConsumerQueue("central.losses", ("loss_event",))
ALERTS_QUEUE = ConsumerQueue("central.alerts", ("watchlist_alert",))
CROPS_QUEUE = ConsumerQueue("central.crops", ("plate_crop",))
CONSUMER_QUEUES = (
    SEGMENTS_QUEUE, PLATES_QUEUE, HEARTBEATS_QUEUE, THUMBNAILS_QUEUE, LOSSES_QUEUE, ALERTS_QUEUE,
    CROPS_QUEUE,
)  # fmt: skip


# A quorum queue, so commands wait safely while the agent is offline for days.
AGENT_QUEUE_ARGUMENTS: FieldTable = {
    "x-queue-type": "quorum",
    "x-delivery-limit": DELIVERY_LIMIT,
    "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
}


def agent_user(agent_id: UUID) -> str:
    """The agent's own RabbitMQ user name."""
    return f"agent-{agent_id}"


def agent_command_queue(agent_id: UUID) -> str:
    """The queue central sends this agent's commands to (watchlists, upload requests)."""
    return f"gtvision.agent.{agent_id}.commands"


@dataclass(frozen=True)
class AgentPermissions:
    """What one agent's broker user may do: publish its own routing keys, read its own queue,
    declare nothing (it finds the exchange with a passive declare)."""

    configure: str
    write: str
    read: str
    topic_write: str


def agent_permissions(agent_id: UUID, city_id: UUID) -> AgentPermissions:
    """Regular expressions for RabbitMQ's permissions and topic permissions of one agent."""
    return AgentPermissions(
        configure="^$",
        write=f"^{EVENTS_EXCHANGE.replace('.', '[.]')}$",
        read=f"^{agent_command_queue(agent_id).replace('.', '[.]')}$",
        topic_write=f"^v1[.][a-z_]+[.]{city_id}[.]{agent_id}$",
    )


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
        arguments: FieldTable = {
            "x-queue-type": "quorum",
            # RabbitMQ 3.10 has no default limit: without it a poison message loops forever.
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            # Quorum queues lose no dead letters with at-least-once dead-lettering,
            # which requires reject-publish overflow.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        if consumer.message_ttl_ms is not None:
            arguments["x-message-ttl"] = consumer.message_ttl_ms
        queue = await channel.declare_queue(consumer.name, durable=True, arguments=arguments)
        for message_type in consumer.message_types:
            await queue.bind(events, routing_key=f"v1.{message_type}.#")
            await dlq.bind(dlx, routing_key=f"v1.{message_type}.#")
    return events


async def declare_agent_queue(channel: AbstractChannel, agent_id: UUID) -> None:
    """Declare an agent's command queue (central does, at enrolment; agents declare nothing)."""
    await channel.declare_queue(
        agent_command_queue(agent_id), durable=True, arguments=AGENT_QUEUE_ARGUMENTS
    )


async def find_events_exchange(channel: AbstractChannel) -> AbstractExchange:
    """The events exchange by a passive declare: what an agent's restricted user may do.

    Fails (and the caller retries) until central has declared the topology.
    """
    return await channel.get_exchange(EVENTS_EXCHANGE, ensure=True)
