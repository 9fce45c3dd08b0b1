"""Central's commands to this agent, consumed from its own queue and dispatched by type.

Each agent may read only its own quorum queue (``gtvision.agent.<agent_id>.commands``, declared
by central at enrolment), where commands wait while the agent is offline. A handler per message
type lives in ``CommandConsumer.handlers``; a new command is a new wire model in
``shared/messages.py`` and a new entry there. A command that can never be applied (unparsable,
of a type without a handler, addressed to another agent) is logged and acked; one whose handler
fails is requeued, and the queue's delivery limit bounds the retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from agent.config import AgentConfig
from agent.store import Store, WatchEntry
from shared.messages import (
    ConfigHint,
    Message,
    MessageRejected,
    UploadRequest,
    WatchlistUpdate,
    decode,
    encode,
)
from shared.topology import agent_command_queue

log = logging.getLogger(__name__)

Handler = Callable[[Message], Awaitable[None]]
HintApplier = Callable[[ConfigHint], Awaitable[object]]

# Short heartbeats: a half-open link is noticed in seconds (as the relay's).
AMQP_HEARTBEAT_S = 5
PREFETCH = 8
MAX_BACKOFF_S = 60.0
WATCHLIST_VERSION_KEY = "watchlist_version"  # the store's meta row: the version held
CONFIG_HINT_KEY = "config_hint"  # the store's meta row: the hint held, as its wire JSON


def _body_type(body: bytes) -> str | None:
    """The ``type`` field of a JSON body, for a command published without the AMQP type."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


class CommandConsumer:
    """Consumes the agent's command queue until cancelled, reconnecting with backoff."""

    def __init__(
        self, config: AgentConfig, store: Store, on_config_hint: HintApplier | None = None
    ) -> None:
        self.config = config
        self.store = store
        # Applies a newly held config hint to the running agent (Agent.apply_hint).
        self.on_config_hint = on_config_hint
        self.handlers: dict[str, Handler] = {
            "upload_request": self.upload_request,
            "watchlist_update": self.watchlist_update,
            "config_hint": self.config_hint,
        }
        self.handled = 0
        self.connected = False
        self.last_error: str | None = None
        self._failures = 0

    async def run(self) -> None:
        """Consume forever: a lost connection (broker down, link cut) is retried with
        exponential backoff (1 s → 60 s, jittered), like the relay's lanes."""
        while True:
            try:
                await self._consume()
            except Exception as exc:
                # Many exception types mean "the link went away"; none may stop the agent.
                self.last_error = str(exc) or type(exc).__name__
            self._failures += 1
            delay = min(2 ** (self._failures - 1), MAX_BACKOFF_S) * random.uniform(0.8, 1.2)
            log.warning("commands: %s; reconnecting in %.1fs", self.last_error, delay)
            await asyncio.sleep(delay)

    async def _consume(self) -> None:
        url = self.config.central.amqp_url.get_secret_value()
        connection = await aio_pika.connect(url, heartbeat=AMQP_HEARTBEAT_S, timeout=10)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            # A passive declare: the agent's broker user may read its queue, not declare it.
            queue = await channel.get_queue(agent_command_queue(self.config.agent_id), ensure=True)
            self.connected, self.last_error, self._failures = True, None, 0
            log.info("commands: consuming %s", queue.name)
            async with queue.iterator() as messages:
                async for message in messages:
                    await self.handle(message)
            raise ConnectionError("command channel closed")
        finally:
            self.connected = False
            try:
                await connection.close()
            except Exception as exc:  # a dead link cannot close cleanly; that is fine
                log.debug("commands: closing AMQP connection: %r", exc)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Apply one command and settle its delivery."""
        kind = message.type or _body_type(message.body) or ""
        handler = self.handlers.get(kind)
        if handler is None:
            log.error("command %s of unknown type %r: ignored", message.message_id, kind)
            await message.ack()
            return
        try:
            command = decode(message.body, kind)
        except MessageRejected as exc:
            log.error("command %s refused: %s", message.message_id, exc.reason)
            await message.ack()
            return
        if command.agent_id != self.config.agent_id:
            log.error(
                "command %s is addressed to agent %s, not this one: ignored",
                message.message_id, command.agent_id,
            )  # fmt: skip
            await message.ack()
            return
        try:
            await handler(command)
        except Exception:
            log.exception(
                "command %s (%s) failed; it will be redelivered", message.message_id, kind
            )
            await message.nack(requeue=True)
            return
        self.handled += 1
        await message.ack()

    async def watchlist_update(self, command: Message) -> None:
        """Replace the local watchlist with the city's lists, unless this version is not newer
        than the one held (a resend, or an update overtaken by a later one)."""
        assert isinstance(command, WatchlistUpdate)
        held = int(await self.store.get_meta(WATCHLIST_VERSION_KEY) or -1)
        if command.version <= held:
            log.info(
                "watchlist update %s: version %d is not newer than %d; ignored",
                command.update_id, command.version, held,
            )  # fmt: skip
            return
        entries = [WatchEntry(p.plate, p.watchlist_id, p.reason) for p in command.plates]
        count = await self.store.replace_watchlist(entries)
        # After the lists: a crash in between applies the same version again, harmlessly.
        await self.store.set_meta(WATCHLIST_VERSION_KEY, str(command.version))
        log.info("watchlist version %d loaded: %d plate(s)", command.version, count)

    async def upload_request(self, command: Message) -> None:
        """Send the requested segments next (docs/design/clips.md, upload on demand)."""
        assert isinstance(command, UploadRequest)
        found = await self.store.prioritize_segments(
            command.camera_id, command.start_ms, command.end_ms
        )
        if found:
            log.info(
                "upload request %s: %d segment(s) of camera=%s go next (%s)",
                command.request_id, found, command.camera_id, command.reason,
            )  # fmt: skip
        else:
            log.warning(
                "upload request %s: no unsent segment of camera=%s in [%d, %d) (%s); "
                "nothing to send",
                command.request_id, command.camera_id, command.start_ms, command.end_ms,
                command.reason,
            )  # fmt: skip

    async def config_hint(self, command: Message) -> None:
        """Hold central's config hint, unless its version is not newer than the one held, then
        apply it to the running agent (docs/design/sync.md, "Command channel")."""
        assert isinstance(command, ConfigHint)
        held = await held_config_hint(self.store)
        if held is not None and command.version <= held.version:
            log.info(
                "config hint %s: version %d is not newer than %d; ignored",
                command.hint_id, command.version, held.version,
            )  # fmt: skip
            return
        # Held first: a crash before it is applied applies it at the next start, before any
        # camera starts.
        await self.store.set_meta(CONFIG_HINT_KEY, encode(command).decode())
        log.info(
            "config hint version %d held: upload cap %s Mbps, %d camera(s) disabled at central",
            command.version, command.max_upload_mbps, len(command.disabled_cameras()),
        )  # fmt: skip
        if self.on_config_hint is not None:
            await self.on_config_hint(command)


async def held_config_hint(store: Store) -> ConfigHint | None:
    """The config hint the store holds, None if none (or, logged, one that no longer parses)."""
    raw = await store.get_meta(CONFIG_HINT_KEY)
    if raw is None:
        return None
    try:
        hint = decode(raw.encode(), "config_hint")
    except MessageRejected as exc:
        log.error("the held config hint is unreadable (%s): ignored", exc.reason)
        return None
    assert isinstance(hint, ConfigHint)
    return hint
