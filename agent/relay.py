"""Publishes outbox rows to central: blobs by claim-check to object storage, then the message to
RabbitMQ with publisher confirms. A row is marked sent only after the broker's Basic.Ack."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import httpx
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

from agent.config import AgentConfig
from agent.store import OutboxRow, Store
from shared.messages import BlobRef, Heartbeat, SegmentRecorded, ThumbnailTaken, encode
from shared.topology import find_events_exchange, routing_key

log = logging.getLogger(__name__)

try:
    AGENT_VERSION = version("gtvision")
except PackageNotFoundError:  # running from a source tree that was never installed
    AGENT_VERSION = "unknown"

PUBLISH_TIMEOUT_S = 10.0
# Rows fetched per round; message-only rows among them are all in flight at once.
BATCH_ROWS = 500
BLOB_ROWS_PER_ROUND = 4
CONTENT_TYPES = {"segment": "video/mp4", "thumbnail": "image/jpeg"}
# Outbox kinds whose payload is the whole wire message (no blob to upload first).
MESSAGE_ONLY_KINDS = frozenset({"plate_read", "loss_event"})
HEARTBEAT_INTERVAL_S = 10.0
IDLE_POLL_S = 0.5
UPLOAD_TIMEOUT_S = 120.0
# Short heartbeats: a half-open link is noticed in seconds, not the default minutes.
AMQP_HEARTBEAT_S = 5


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class RelayError(Exception):
    """A row that could not be delivered this time; it stays pending and is retried."""


class Relay:
    """Drains the outbox in priority order; backs off exponentially while central is away."""

    def __init__(self, config: AgentConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._http: httpx.AsyncClient | None = None
        self._blob_http: httpx.AsyncClient | None = None
        self.sent = 0
        self.last_error: str | None = None
        self._last_heartbeat = float("-inf")
        # Sent as each message's user_id: the broker checks it is the connection's user, and
        # central checks it is this agent's user.
        user = urlsplit(config.central.amqp_url.get_secret_value()).username
        self._broker_user = unquote(user) if user else None

    async def run(self) -> None:
        """Relay until cancelled."""
        failures = 0
        try:
            while True:
                try:
                    await self.maybe_heartbeat()
                    sent = await self.run_once()
                    failures = 0
                    if not sent:
                        # Woken at once by a new outbox row; the timeout catches rows written
                        # by another process (and heartbeats fall due).
                        await self.store.wait_for_outbox(IDLE_POLL_S)
                except Exception as exc:
                    # The relay never dies: a link going down mid-publish surfaces as many
                    # exception types (OSError, AMQP errors, a closed channel's RuntimeError,
                    # HTTP errors); an unexpected one is logged with its traceback. Rows stay
                    # pending and are retried after the backoff.
                    failures += 1
                    self.last_error = str(exc) or type(exc).__name__
                    delay = min(2 ** (failures - 1), 60) * random.uniform(0.8, 1.2)
                    expected = (RelayError, OSError, aio_pika.exceptions.AMQPError, httpx.HTTPError)
                    log.log(
                        logging.WARNING if isinstance(exc, expected) else logging.ERROR,
                        "relay: %s; retrying in %.1fs", self.last_error, delay,
                        exc_info=not isinstance(exc, expected),
                    )  # fmt: skip
                    await self._drop_connection()
                    await asyncio.sleep(delay)
        finally:
            await self.close()

    async def run_once(self) -> int:
        """Send one batch of pending rows in priority order; returns how many were acked.

        Rows whose message is all there is (plate reads, loss events) go out together, many
        publishes in flight at once, and are marked sent in one transaction; rows with a blob
        (segments) go one at a time, upload first.
        """
        rows = await self.store.pending(limit=BATCH_ROWS)
        if not rows:
            return 0
        exchange = await self._ensure_exchange()
        messages = [r for r in rows if r.kind in MESSAGE_ONLY_KINDS]
        sent = await self._publish_window(exchange, messages) if messages else 0
        # A few blobs per round only: plate reads that arrive meanwhile go out first next round.
        blobs = [r for r in rows if r.kind not in MESSAGE_ONLY_KINDS][:BLOB_ROWS_PER_ROUND]
        for row in blobs:
            if await self._send_blob_row(exchange, row):
                sent += 1
        self.last_error = None
        return sent

    async def _publish_window(self, exchange: AbstractExchange, rows: list[OutboxRow]) -> int:
        """Publish rows concurrently and mark the acked ones sent in one transaction."""
        key = {kind: routing_key(kind, self.config.city_id, self.config.agent_id) for kind in
               MESSAGE_ONLY_KINDS}  # fmt: skip
        results = await asyncio.gather(
            *(self._publish(exchange, row, json.dumps(row.payload).encode(), key[row.kind])
              for row in rows),
            return_exceptions=True,
        )  # fmt: skip
        acked = [row.id for row, res in zip(rows, results, strict=True) if res is None]
        await self.store.mark_sent_many(acked)
        self.sent += len(acked)
        failed = [(row, res) for row, res in zip(rows, results, strict=True) if res is not None]
        if failed:
            row, exc = failed[0]
            await self.store.mark_failed(row.id, f"{type(exc).__name__}: {exc}")
            raise RelayError(f"{len(failed)} of {len(rows)} publishes failed, e.g. {exc!r}")
        return len(acked)

    async def _send_blob_row(self, exchange: AbstractExchange, row: OutboxRow) -> bool:
        """Upload the row's blob, publish its message, mark it sent. False if it was lost."""
        try:
            try:
                body, key = await self._prepare(row)
            except FileNotFoundError as exc:
                # docs/design/segments.md: the file vanished under us (deleted by hand, a
                # failed disk). Record the loss and move on; retrying would block the queue.
                reason = f"file missing at upload: {exc.filename}"
                if row.kind == "segment":
                    await self.store.mark_lost(row.ref_id, reason, _now_ms(), "file_missing")
                else:
                    await self.store.drop_row(row.id, reason)
                log.error("%s=%s %s; not sent", row.kind, row.ref_id, reason)
                return False
            await self._publish(exchange, row, body, key)
        except Exception as exc:
            await self.store.mark_failed(row.id, f"{type(exc).__name__}: {exc}")
            raise RelayError(f"outbox row {row.id} ({row.kind}): {exc}") from exc
        await self.store.mark_sent(row.id)
        self.sent += 1
        if row.kind == "thumbnail":
            # Central has it now; a thumbnail is not kept on the agent.
            await asyncio.to_thread(Path(row.payload["path"]).unlink, missing_ok=True)
        return True

    async def _publish(
        self, exchange: AbstractExchange, row: OutboxRow, body: bytes, key: str
    ) -> None:
        """One persistent publish; returns only on the broker's Basic.Ack.

        on_return_raises (set on the channel) and a timeout: unroutable or unconfirmed fails.
        """
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=f"{row.kind}:{row.ref_id}",
                user_id=self._broker_user,
            ),
            routing_key=key,
            timeout=PUBLISH_TIMEOUT_S,
        )

    async def maybe_heartbeat(self) -> None:
        """Publish a heartbeat (health and backlog) if the last one is old enough.

        Heartbeats skip the outbox: they are state, and a stale one is worth nothing.
        """
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_heartbeat < HEARTBEAT_INTERVAL_S:
            return
        backlog = await self.store.backlog()
        hb = Heartbeat(
            heartbeat_id=uuid.uuid4(),
            agent_id=self.config.agent_id,
            sent_ms=_now_ms(),
            agent_version=AGENT_VERSION,
            outbox_pending=backlog["pending"],
            oldest_pending_age_ms=backlog["oldest_pending_age_ms"],
        )
        exchange = await self._ensure_exchange()
        await exchange.publish(
            aio_pika.Message(
                encode(hb),
                content_type="application/json",
                expiration=60,
                user_id=self._broker_user,
            ),
            routing_key=routing_key("heartbeat", self.config.city_id, self.config.agent_id),
            timeout=PUBLISH_TIMEOUT_S,
        )
        self._last_heartbeat = loop.time()

    async def _prepare(self, row: OutboxRow) -> tuple[bytes, str]:
        """Upload the row's blob (claim-check) and build its message."""
        if row.kind == "segment":
            return await self._prepare_segment(row)
        if row.kind == "thumbnail":
            return await self._prepare_thumbnail(row)
        raise RelayError(f"unknown outbox kind {row.kind!r}")

    async def _prepare_segment(self, row: OutboxRow) -> tuple[bytes, str]:
        seg = await self.store.segment(row.ref_id)
        if seg is None:
            raise RelayError(f"segment {row.ref_id} has no row")
        blob = await self._upload(
            kind="segment",
            camera_id=str(seg.camera_id),
            object_id=str(seg.segment_id),
            path=seg.path,
            size_bytes=seg.size_bytes,
            sha256=seg.sha256,
        )
        msg = SegmentRecorded(
            segment_id=seg.segment_id,
            agent_id=self.config.agent_id,
            camera_id=seg.camera_id,
            start_ms=seg.start_ms,
            duration_ms=seg.duration_ms,
            codec=seg.codec,
            blob=blob,
            run_id=seg.run_id,
            time_source=seg.time_source,
            clock_sync=seg.clock_sync,
            clock_error_ms=seg.clock_error_ms,
            shifted_ms=seg.shifted_ms,
        )
        return encode(msg), routing_key("segment", self.config.city_id, self.config.agent_id)

    async def _prepare_thumbnail(self, row: OutboxRow) -> tuple[bytes, str]:
        p = row.payload
        blob = await self._upload(
            kind="thumbnail",
            camera_id=p["camera_id"],
            object_id=p["thumbnail_id"],
            path=Path(p["path"]),
            size_bytes=p["size_bytes"],
            sha256=p["sha256"],
        )
        msg = ThumbnailTaken(
            thumbnail_id=p["thumbnail_id"],
            agent_id=self.config.agent_id,
            camera_id=p["camera_id"],
            taken_ms=p["taken_ms"],
            blob=blob,
        )
        return encode(msg), routing_key("thumbnail", self.config.city_id, self.config.agent_id)

    async def _upload(
        self, *, kind: str, camera_id: str, object_id: str, path: Path, size_bytes: int, sha256: str
    ) -> BlobRef:
        """Claim-check: ask central for a presigned PUT URL for this object, then upload it."""
        http = self._client()
        resp = await http.post(
            "/api/agent/v1/uploads",
            json={
                "kind": kind,
                "camera_id": camera_id,
                "object_id": object_id,
                "size_bytes": size_bytes,
                "sha256": sha256,
            },
        )
        if resp.status_code != 200:
            raise RelayError(f"upload URL refused: HTTP {resp.status_code} {resp.text[:200]}")
        grant: dict[str, Any] = resp.json()
        data = await asyncio.to_thread(path.read_bytes)
        # A separate client: the presigned URL is the only credential S3 may see (an extra
        # Authorization header makes the request ambiguous and S3 refuses it).
        put = await self._blob_client().put(
            grant["url"], content=data, headers={"Content-Type": CONTENT_TYPES[kind]}
        )
        if put.status_code != 200:
            raise RelayError(f"object upload failed: HTTP {put.status_code} {put.text[:200]}")
        return BlobRef(
            bucket=grant["bucket"], key=grant["key"], size_bytes=size_bytes, sha256=sha256
        )

    def _blob_client(self) -> httpx.AsyncClient:
        if self._blob_http is None:
            self._blob_http = httpx.AsyncClient(timeout=UPLOAD_TIMEOUT_S)
        return self._blob_http

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.config.central.api_url,
                headers={"Authorization": f"Bearer {self.config.central.token.get_secret_value()}"},
                timeout=30.0,
            )
        return self._http

    async def _ensure_exchange(self) -> AbstractExchange:
        if self._exchange is None:
            url = self.config.central.amqp_url.get_secret_value()
            self._connection = await aio_pika.connect_robust(
                url, heartbeat=AMQP_HEARTBEAT_S, timeout=10
            )
            channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            # Agents' broker users may declare nothing: central owns the topology.
            self._exchange = await find_events_exchange(channel)
        return self._exchange

    async def _drop_connection(self) -> None:
        self._exchange = None
        if self._connection is not None:
            conn, self._connection = self._connection, None
            try:
                await conn.close()
            except Exception as exc:  # a dead link cannot close cleanly; that is fine
                log.debug("relay: closing AMQP connection: %r", exc)

    async def close(self) -> None:
        await self._drop_connection()
        for client in (self._http, self._blob_http):
            if client is not None:
                await client.aclose()
        self._http = self._blob_http = None
