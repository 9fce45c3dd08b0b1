"""Publishes outbox rows to central: blobs by claim-check to object storage, then the message to
RabbitMQ with publisher confirms. A row is marked sent only after the broker's Basic.Ack.

Two lanes, each with its own AMQP connection and backoff (docs/design/sync.md, "Throughput and
priorities"): messages (plate reads, loss events) go out in a sliding window of confirms, plate
reads many to a message; blobs (thumbnails, plate reads' evidence crops, then video) are
uploaded one at a time, paced by ``sync.max_upload_mbps``, and only while no message is
waiting. A slow or capped upload never holds back a plate read, and an object store that is
down never stops the messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import httpx
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

from agent.clock import read_clock_state
from agent.config import AgentConfig
from agent.store import OutboxRow, RawOutboxRow, Store
from shared.messages import (
    MAX_BATCH_BYTES,
    MAX_BATCH_READS,
    BlobRef,
    Heartbeat,
    PlateCrop,
    SegmentRecorded,
    ThumbnailTaken,
    encode,
)
from shared.topology import find_events_exchange, routing_key

log = logging.getLogger(__name__)

try:
    AGENT_VERSION = version("gtvision")
except PackageNotFoundError:  # running from a source tree that was never installed
    AGENT_VERSION = "unknown"

PUBLISH_TIMEOUT_S = 10.0
# Message rows read from SQLite per query; the window reads on while earlier ones are in flight.
FETCH_ROWS = 500
# Plate reads per AMQP message (PlateReadBatch). 1 sends each read alone.
PLATE_READS_PER_MESSAGE = 100
# Reads in flight at once; the window in messages is this over the reads per message.
WINDOW_READS = 2000
MAX_WINDOW_MESSAGES = 500
# Acked rows marked sent per SQLite transaction (one fsync), while publishing goes on.
MARK_ROWS = 500
BLOB_ROWS_PER_ROUND = 4
# Blobs sent at once: a second upload's bytes flow while the first one's grant, publish and
# mark wait on round trips. The bandwidth cap holds for them together.
BLOB_CONCURRENCY = 2
CONTENT_TYPES = {
    "segment": "video/mp4",
    "thumbnail": "image/jpeg",
    "crop": "image/jpeg",
    "context": "image/jpeg",
}
# Outbox kinds whose payload is the whole wire message (no blob to upload first).
MESSAGE_ONLY_KINDS = ("watchlist_alert", "plate_read", "loss_event")
# Outbox kinds with a blob, in the blob lane; the store's priorities order them.
BLOB_KINDS = ("thumbnail", "crop", "segment")
HEARTBEAT_INTERVAL_S = 10.0
IDLE_POLL_S = 0.5
UPLOAD_TIMEOUT_S = 120.0
# Paced uploads go in chunks of at most this (smaller under a low cap, for an even rate).
UPLOAD_CHUNK_BYTES = 64 * 1024
# A part of a multipart upload that fails is tried again up to this many times, after 0.5 s,
# then 1 s, then 2 s; then the upload is aborted and the row waits for the lane's backoff.
PART_RETRIES = 3
PART_RETRY_DELAY_S = 0.5
# Part URLs older than this share of their lifetime are asked for again before the next part.
PART_URL_REFRESH = 0.8
# Short heartbeats: a half-open link is noticed in seconds, not the default minutes.
AMQP_HEARTBEAT_S = 5
# A batch body is the reads' stored JSON joined, inside this envelope.
_BATCH_HEAD = '{{"type":"plate_read_batch","schema_version":1,"agent_id":"{agent}","reads":['
_BATCH_BUDGET = MAX_BATCH_BYTES - 1024  # bytes of reads per batch, envelope left aside


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _read_part(path: Path, offset: int, size: int) -> bytes:
    """``size`` bytes of a file from ``offset`` (fewer at its end). Blocks."""
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(size)


class RelayError(Exception):
    """A row that could not be delivered this time; it stays pending and is retried."""


class TokenBucket:
    """Paces bytes to ``rate`` per second with bursts of at most ``burst`` bytes.

    ``take`` may overdraw: it then sleeps until the debt is paid, so N bytes taken from a fresh
    bucket need at least (N - burst) / rate seconds.
    """

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate) - n
        self._at = now
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate)


class _Link:
    """One AMQP connection with a confirming channel, opened on first use."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None

    async def exchange(self) -> AbstractExchange:
        if self._exchange is None:
            self._connection = await aio_pika.connect_robust(
                self._url, heartbeat=AMQP_HEARTBEAT_S, timeout=10
            )
            # on_return_raises: an unroutable publish fails instead of "succeeding".
            channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            # Agents' broker users may declare nothing: central owns the topology.
            self._exchange = await find_events_exchange(channel)
        return self._exchange

    async def drop(self) -> None:
        self._exchange = None
        if self._connection is not None:
            conn, self._connection = self._connection, None
            try:
                await conn.close()
            except Exception as exc:  # a dead link cannot close cleanly; that is fine
                log.debug("relay: closing AMQP connection: %r", exc)


class Relay:
    """Drains the outbox in priority order; each lane backs off exponentially while it fails."""

    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        *,
        plate_reads_per_message: int = PLATE_READS_PER_MESSAGE,
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        if not 1 <= plate_reads_per_message <= MAX_BATCH_READS:
            raise ValueError(f"plate_reads_per_message must be 1..{MAX_BATCH_READS}")
        self.config = config
        self.store = store
        self.reads_per_message = plate_reads_per_message
        # Heartbeat fields the agent's supervisor knows (cameras, disk): see _heartbeat.
        self.health = health
        self.window = min(MAX_WINDOW_MESSAGES, max(4, WINDOW_READS // plate_reads_per_message))
        url = config.central.amqp_url.get_secret_value()
        self._messages_link = _Link(url)
        self._blobs_link = _Link(url)
        self._http: httpx.AsyncClient | None = None
        self._blob_http: httpx.AsyncClient | None = None
        self._chunk = UPLOAD_CHUNK_BYTES
        self._bucket: TokenBucket | None = None
        self.set_upload_cap(config.sync.upload_bytes_per_s())
        # Set while no message row is waiting: the blob lane starts an upload only then.
        self._messages_idle = asyncio.Event()
        self.sent = 0  # rows marked sent
        self.messages_sent = 0  # AMQP messages of the message lane acked (a batch is one)
        self.uploaded_bytes = 0  # blob bytes handed to object storage, for status and benches
        self.errors: dict[str, str | None] = {"messages": None, "blobs": None}
        self._last_heartbeat = float("-inf")
        self._keys = {
            kind: routing_key(kind, config.city_id, config.agent_id)
            for kind in (*MESSAGE_ONLY_KINDS, "plate_read_batch")
        }
        # Sent as each message's user_id: the broker checks it is the connection's user, and
        # central checks it is this agent's user.
        user = urlsplit(url).username
        self._broker_user = unquote(user) if user else None

    def set_upload_cap(self, rate: float | None) -> None:
        """Pace blob uploads to ``rate`` bytes per second (None: unlimited). A capped upload in
        flight takes a new cap from its next chunk; an unpaced one finishes unpaced."""
        # Under a cap, chunks of ~0.1 s of the rate keep the pace even.
        self._chunk = UPLOAD_CHUNK_BYTES
        if rate is None:
            self._bucket = None
            return
        self._chunk = max(4096, min(UPLOAD_CHUNK_BYTES, int(rate / 10)))
        if self._bucket is None:
            self._bucket = TokenBucket(rate, self._chunk)
        else:  # the same bucket: uploads in flight hold it
            self._bucket.rate, self._bucket.burst = rate, self._chunk

    @property
    def upload_cap(self) -> float | None:
        """The blob uploads' pace in bytes per second, None when unlimited."""
        return None if self._bucket is None else self._bucket.rate

    @property
    def last_error(self) -> str | None:
        """The latest failure of either lane, None once both succeed again."""
        found = [f"{lane}: {err}" for lane, err in self.errors.items() if err]
        return "; ".join(found) or None

    async def run(self) -> None:
        """Relay until cancelled: both lanes at once."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._lane("messages", self._message_round), name="relay-messages")
                tg.create_task(self._lane("blobs", self._blob_round), name="relay-blobs")
        finally:
            await self.close()

    async def _lane(self, name: str, round_: Any) -> None:
        """Run ``round_`` (one round of the lane's work, or a wait when idle) forever."""
        link = self._messages_link if name == "messages" else self._blobs_link
        failures = 0
        while True:
            try:
                await round_()
                failures = 0
                self.errors[name] = None
            except Exception as exc:
                # The relay never dies: a link going down mid-publish surfaces as many
                # exception types (OSError, AMQP errors, a closed channel's RuntimeError,
                # HTTP errors); an unexpected one is logged with its traceback. Rows stay
                # pending and are retried after the backoff.
                failures += 1
                self.errors[name] = str(exc) or type(exc).__name__
                delay = min(2 ** (failures - 1), 60) * random.uniform(0.8, 1.2)
                expected = (RelayError, OSError, aio_pika.exceptions.AMQPError, httpx.HTTPError)
                log.log(
                    logging.WARNING if isinstance(exc, expected) else logging.ERROR,
                    "relay %s: %s; retrying in %.1fs", name, self.errors[name], delay,
                    exc_info=not isinstance(exc, expected),
                )  # fmt: skip
                await link.drop()
                await asyncio.sleep(delay)

    async def _message_round(self) -> None:
        await self.maybe_heartbeat()
        if await self._pump():
            return
        self._messages_idle.set()
        # Woken at once by a new outbox row; the timeout catches rows written by another
        # process (and heartbeats fall due).
        await self.store.wait_for_outbox(IDLE_POLL_S)

    async def _blob_round(self) -> None:
        # Messages first: wait while any is pending (the message lane says when it is idle).
        await self._messages_idle.wait()
        if not await self._send_blobs(BLOB_ROWS_PER_ROUND, yield_to_messages=True):
            await asyncio.sleep(IDLE_POLL_S)

    async def run_once(self) -> int:
        """One round, in priority order: the message rows one query returns (sliding window),
        then a few blobs. Returns how many rows were acked."""
        sent = await self._pump(once=True)
        sent += await self._send_blobs(BLOB_ROWS_PER_ROUND, yield_to_messages=False)
        self.errors = dict.fromkeys(self.errors)
        return sent

    # -- messages: a sliding window of confirms --------------------------------------------

    async def _pump(self, *, once: bool = False) -> int:
        """Publish message rows in priority order with up to ``window`` messages in flight,
        marking rows sent as their acks arrive, until none is pending (or one query's worth,
        with ``once``). Returns how many rows were marked sent.

        Rows are marked sent only on their Basic.Ack; after a failure nothing new is published,
        the rest in flight finish, the acked ones are marked and RelayError is raised.

        Rows more urgent than the read position that arrive meanwhile (an alert during a long
        drain of plate reads) are read and sent first, without losing the position. Rows of the
        position's priority written after the pump began (live plate reads during a drain) go
        ahead of the rest of the backlog it began with: a live read never waits behind it.
        """
        exchange = await self._messages_link.exchange()
        window = asyncio.Semaphore(self.window)
        in_flight: set[asyncio.Task[None]] = set()
        acked: list[int] = []
        outstanding: set[int] = set()  # published, not yet marked sent
        failed: list[tuple[list[int], BaseException]] = []
        marking: asyncio.Task[int] | None = None
        marked = 0
        head: int | None = None  # the newest outbox row when the pump began
        after: tuple[int, int] | None = None  # read position in the backlog (ids up to head)
        backlog_read = False  # every backlog row has been read
        live: tuple[int, int] | None = None  # read position among the rows newer than head

        async def fetch() -> list[RawOutboxRow]:
            nonlocal head, after, backlog_read, live
            if head is None:
                head = await self.store.outbox_head()
            fresh: list[RawOutboxRow] = []
            if after is not None:
                urgent = await self.store.pending_of(MESSAGE_ONLY_KINDS, FETCH_ROWS, below=after[0])
                urgent = [r for r in urgent if r.id not in outstanding]
                if urgent:
                    return urgent
                # Newer rows of the position's priority, ahead of the rest of the backlog.
                if live is None or live[0] != after[0]:
                    live = (after[0], head)
                fresh = await self.store.pending_of(MESSAGE_ONLY_KINDS, FETCH_ROWS, newer=live)
                if fresh:
                    live = (fresh[-1].priority, fresh[-1].id)
            if backlog_read or len(fresh) >= FETCH_ROWS:
                return fresh
            limit = FETCH_ROWS - len(fresh)
            rows = await self.store.pending_of(MESSAGE_ONLY_KINDS, limit, after, through=head)
            backlog_read = len(rows) < limit
            if rows:
                after = (rows[-1].priority, rows[-1].id)
            return fresh + rows

        async def mark(ids: list[int]) -> int:
            n = await self._mark(ids)
            outstanding.difference_update(ids)
            return n

        async def publish(body: bytes, key: str, message_id: str, ids: list[int]) -> None:
            try:
                await self._publish(exchange, body, key, message_id)
            except Exception as exc:
                failed.append((ids, exc))
            else:
                acked.extend(ids)
                self.messages_sent += 1
            finally:
                window.release()

        try:
            while not failed:
                rows = await fetch()
                if not rows:
                    break
                self._messages_idle.clear()
                for body, key, message_id, ids in self._messages(rows):
                    await window.acquire()
                    if failed:
                        window.release()
                        break
                    outstanding.update(ids)
                    task = asyncio.create_task(publish(body, key, message_id, ids))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if len(acked) >= MARK_ROWS and (marking is None or marking.done()):
                    if marking is not None:
                        marked += marking.result()
                    marking = asyncio.create_task(mark(acked[:]))
                    acked.clear()
                if once:
                    break
                # A long drain must not silence the heartbeats.
                await self.maybe_heartbeat()
        finally:
            # Whatever happened, every ack that arrived is recorded: a re-send is harmless but
            # costs the link.
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
            if marking is not None:
                marked += await marking
            marked += await self._mark(acked)
        if failed:
            ids, exc = failed[0]
            await self.store.mark_failed(ids[0], f"{type(exc).__name__}: {exc}")
            raise RelayError(f"{len(failed)} publishes failed, e.g. {exc!r}")
        return marked

    async def _mark(self, ids: list[int]) -> int:
        await self.store.mark_sent_many(ids)
        self.sent += len(ids)
        return len(ids)

    def _messages(
        self, rows: Sequence[RawOutboxRow]
    ) -> Iterator[tuple[bytes, str, str, list[int]]]:
        """(body, routing key, message id, outbox ids) per AMQP message, in the rows' order:
        runs of plate reads become PlateReadBatch messages, anything else goes alone. The
        stored payload is the wire body: it is sent as it is, never parsed."""
        run: list[RawOutboxRow] = []
        size = 0
        for row in rows:
            if row.kind == "plate_read" and self.reads_per_message > 1:
                if run and (
                    len(run) >= self.reads_per_message or size + len(row.payload) > _BATCH_BUDGET
                ):
                    yield self._plate_message(run)
                    run, size = [], 0
                run.append(row)
                size += len(row.payload) + 1
                continue
            if run:
                yield self._plate_message(run)
                run, size = [], 0
            yield row.payload.encode(), self._keys[row.kind], f"{row.kind}:{row.ref_id}", [row.id]
        if run:
            yield self._plate_message(run)

    def _plate_message(self, run: list[RawOutboxRow]) -> tuple[bytes, str, str, list[int]]:
        first = run[0]
        if len(run) == 1:
            return (
                first.payload.encode(),
                self._keys["plate_read"],
                f"plate_read:{first.ref_id}",
                [first.id],
            )
        head = _BATCH_HEAD.format(agent=self.config.agent_id)
        body = (head + ",".join(r.payload for r in run) + "]}").encode()
        message_id = f"plate_read_batch:{first.ref_id}+{len(run) - 1}"
        return body, self._keys["plate_read_batch"], message_id, [r.id for r in run]

    async def _publish(
        self, exchange: AbstractExchange, body: bytes, key: str, message_id: str
    ) -> None:
        """One persistent publish; returns only on the broker's Basic.Ack.

        on_return_raises (set on the channel) and a timeout: unroutable or unconfirmed fails.
        """
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
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
        clock = read_clock_state()
        hb = Heartbeat(
            heartbeat_id=uuid.uuid4(),
            agent_id=self.config.agent_id,
            sent_ms=_now_ms(),
            agent_version=AGENT_VERSION,
            outbox_pending=backlog["pending"],
            oldest_pending_age_ms=backlog["oldest_pending_age_ms"],
            pending_blob_bytes=backlog["pending_blob_bytes"],
            clock_sync=clock.sync,
            clock_error_ms=clock.error_ms,
            **self._health(),
        )
        exchange = await self._messages_link.exchange()
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

    # -- blobs: claim-check uploads, one at a time -----------------------------------------

    async def _send_blobs(self, limit: int, *, yield_to_messages: bool) -> int:
        """Send up to ``limit`` blob rows, highest priority first (a thumbnail queued meanwhile
        goes before the rest of the video), ``BLOB_CONCURRENCY`` at a time: one object's grant,
        publish and mark overlap another's bytes. Returns how many were acked."""
        sent = 0
        started = 0
        claimed: set[int] = set()  # rows being sent now: the other worker skips them

        async def worker() -> None:
            nonlocal sent, started
            while started < limit:
                if yield_to_messages and not self._messages_idle.is_set():
                    return
                rows = await self.store.pending_of(BLOB_KINDS, len(claimed) + 1)
                raw = next((r for r in rows if r.id not in claimed), None)
                if raw is None:
                    return
                claimed.add(raw.id)
                started += 1
                row = OutboxRow(raw.id, raw.kind, raw.ref_id, json.loads(raw.payload), raw.attempts)
                try:
                    if await self._send_blob_row(await self._blobs_link.exchange(), row):
                        sent += 1
                finally:
                    claimed.discard(raw.id)

        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(BLOB_CONCURRENCY):
                    tg.create_task(worker())
        except ExceptionGroup as group:
            # One failure stops the round (the other upload is cancelled and stays pending).
            raise group.exceptions[0] from None
        return sent

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
            await self._publish(exchange, body, key, f"{row.kind}:{row.ref_id}")
        except Exception as exc:
            await self.store.mark_failed(row.id, f"{type(exc).__name__}: {exc}")
            raise RelayError(f"outbox row {row.id} ({row.kind}): {exc}") from exc
        await self.store.mark_sent(row.id)
        self.sent += 1
        if row.kind == "thumbnail":
            # Central has it now; a thumbnail is not kept on the agent.
            await asyncio.to_thread(Path(row.payload["path"]).unlink, missing_ok=True)
        return True

    async def _prepare(self, row: OutboxRow) -> tuple[bytes, str]:
        """Upload the row's blob (claim-check) and build its message."""
        if row.kind == "segment":
            return await self._prepare_segment(row)
        if row.kind == "thumbnail":
            return await self._prepare_thumbnail(row)
        if row.kind == "crop":
            return await self._prepare_crop(row)
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
        blob = await self._upload_file("thumbnail", p["thumbnail_id"], p)
        msg = ThumbnailTaken(
            thumbnail_id=p["thumbnail_id"],
            agent_id=self.config.agent_id,
            camera_id=p["camera_id"],
            taken_ms=p["taken_ms"],
            blob=blob,
        )
        return encode(msg), routing_key("thumbnail", self.config.city_id, self.config.agent_id)

    async def _prepare_crop(self, row: OutboxRow) -> tuple[bytes, str]:
        """A plate read's evidence JPEG: kept on the agent after it is sent (docs/design/lpr.md)."""
        p = row.payload
        blob = await self._upload_file("crop", p["read_id"], p)
        context = None
        if "context" in p:  # the whole frame too (lpr.context_frame)
            try:
                context = await self._upload_file(
                    "context", p["read_id"], {**p["context"], "camera_id": p["camera_id"]}
                )
            except FileNotFoundError:  # gone from the disk: the crop goes without it
                log.warning("context frame of read %s is gone; sending its crop alone",
                            p["read_id"])  # fmt: skip
        msg = PlateCrop(
            read_id=p["read_id"],
            agent_id=self.config.agent_id,
            camera_id=p["camera_id"],
            blob=blob,
            context=context,
        )
        return encode(msg), routing_key("plate_crop", self.config.city_id, self.config.agent_id)

    async def _upload_file(self, kind: str, object_id: str, p: dict[str, Any]) -> BlobRef:
        """Upload the file an outbox payload names (camera_id, path, size_bytes, sha256)."""
        return await self._upload(
            kind=kind,
            camera_id=p["camera_id"],
            object_id=object_id,
            path=Path(p["path"]),
            size_bytes=p["size_bytes"],
            sha256=p["sha256"],
        )

    async def _upload(
        self, *, kind: str, camera_id: str, object_id: str, path: Path, size_bytes: int, sha256: str
    ) -> BlobRef:
        """Claim-check: ask central for a presigned PUT URL for this object, then upload it;
        above central's multipart threshold the grant holds a URL per part instead."""
        request = {
            "kind": kind,
            "camera_id": camera_id,
            "object_id": object_id,
            "size_bytes": size_bytes,
            "sha256": sha256,
            "multipart": True,
        }
        grant = await self._grant(request)
        if grant.get("parts"):
            await self._upload_parts(path, request, grant)
        else:
            data = await asyncio.to_thread(path.read_bytes)
            put = await self._put(grant["url"], data, {"Content-Type": CONTENT_TYPES[kind]})
            if put.status_code != 200:
                raise RelayError(f"object upload failed: HTTP {put.status_code} {put.text[:200]}")
        return BlobRef(
            bucket=grant["bucket"], key=grant["key"], size_bytes=size_bytes, sha256=sha256
        )

    async def _grant(self, request: dict[str, Any]) -> dict[str, Any]:
        resp = await self._client().post("/api/agent/v1/uploads", json=request)
        if resp.status_code != 200:
            raise RelayError(f"upload URL refused: HTTP {resp.status_code} {resp.text[:200]}")
        grant: dict[str, Any] = resp.json()
        return grant

    async def _upload_parts(
        self, path: Path, request: dict[str, Any], grant: dict[str, Any]
    ) -> None:
        """A multipart upload: each part read from the file when its turn comes (a large object
        is never held in memory whole), PUT through the bandwidth cap and tried again up to
        ``PART_RETRIES`` times; then central joins the parts. Any failure aborts the upload
        (best effort) and raises RelayError: the row stays pending and starts over later."""
        upload = {
            "kind": request["kind"],
            "camera_id": request["camera_id"],
            "object_id": request["object_id"],
            "upload_id": grant["upload_id"],
        }
        part_size: int = grant["part_size"]
        etags: list[dict[str, Any]] = []
        try:
            urls, fresh_until = self._part_urls(grant)
            for number in range(1, len(urls) + 1):
                if time.monotonic() > fresh_until:  # a slow upload: the URLs would expire
                    urls, fresh_until = self._part_urls(
                        await self._grant({**request, "upload_id": upload["upload_id"]})
                    )
                data = await asyncio.to_thread(
                    _read_part, path, (number - 1) * part_size, part_size
                )
                etag = await self._put_part(urls[number - 1], data, number)
                etags.append({"part_number": number, "etag": etag})
            resp = await self._client().post(
                "/api/agent/v1/uploads/complete", json={**upload, "parts": etags}
            )
            if resp.status_code != 200:
                raise RelayError(
                    f"multipart upload not completed: HTTP {resp.status_code} {resp.text[:200]}"
                )
        except Exception:
            await self._abort_upload(upload)
            raise

    def _part_urls(self, grant: dict[str, Any]) -> tuple[list[str], float]:
        """A grant's part URLs in order, and until when (monotonic) to use them."""
        urls = [p["url"] for p in sorted(grant["parts"], key=lambda p: p["part_number"])]
        return urls, time.monotonic() + PART_URL_REFRESH * grant["expires_in_s"]

    async def _put_part(self, url: str, data: bytes, number: int) -> str:
        """PUT one part, tried again on failure; its ETag (central needs it to complete)."""
        error = ""
        for attempt in range(PART_RETRIES + 1):
            if attempt:
                await asyncio.sleep(PART_RETRY_DELAY_S * 2 ** (attempt - 1))
            try:
                put = await self._put(url, data, {})
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}"
                continue
            etag: str | None = put.headers.get("ETag")
            if put.status_code == 200 and etag:
                return etag
            error = f"HTTP {put.status_code} {put.text[:200]}"
        raise RelayError(f"part {number} failed {PART_RETRIES + 1} times: {error}")

    async def _abort_upload(self, upload: dict[str, Any]) -> None:
        """Ask central to discard a multipart upload; best effort (central also aborts an
        unfinished upload of the same object when it grants it again)."""
        try:
            resp = await self._client().post("/api/agent/v1/uploads/abort", json=upload)
            if resp.status_code not in (204, 404):
                log.warning("multipart upload %s not aborted: HTTP %d", upload["upload_id"],
                            resp.status_code)  # fmt: skip
        except httpx.HTTPError as exc:
            log.warning("multipart upload %s not aborted: %r", upload["upload_id"], exc)

    async def _put(self, url: str, data: bytes, headers: dict[str, str]) -> httpx.Response:
        """PUT bytes to a presigned URL, paced by the bandwidth cap if there is one.

        A separate client: the presigned URL is the only credential S3 may see (an extra
        Authorization header makes the request ambiguous and S3 refuses it). The explicit
        Content-Length keeps a paced upload one plain PUT (S3 refuses chunked encoding).
        """
        headers = {**headers, "Content-Length": str(len(data))}
        if self._bucket is None:  # unlimited: the bytes in one go
            put = await self._blob_client().put(url, content=data, headers=headers)
            self.uploaded_bytes += len(data)
            return put
        return await self._blob_client().put(
            url, content=self._paced(data, self._bucket), headers=headers
        )

    async def _paced(self, data: bytes, bucket: TokenBucket) -> AsyncIterator[bytes]:
        """The upload's bytes in chunks, each let through by the bandwidth cap."""
        view, size = memoryview(data), self._chunk  # the cap may change chunks meanwhile
        for i in range(0, len(data), size):
            chunk = view[i : i + size]
            await bucket.take(len(chunk))
            yield bytes(chunk)
            self.uploaded_bytes += len(chunk)

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

    def _health(self) -> dict[str, Any]:
        """The supervisor's cameras and disk for a heartbeat; nothing if it cannot say."""
        if self.health is None:
            return {}
        try:
            return self.health()
        except Exception:  # a heartbeat without them beats no heartbeat
            log.exception("heartbeat: health report failed")
            return {}

    async def close(self) -> None:
        await self._messages_link.drop()
        await self._blobs_link.drop()
        for client in (self._http, self._blob_http):
            if client is not None:
                await client.aclose()
        self._http = self._blob_http = None
