"""The clip worker (the seed's ClipWorker): makes PENDING clips READY or FAILED.

For each due clip (claimed with ``FOR UPDATE SKIP LOCKED``; the open transaction is the
claim): find the segments central holds in the range; if footage is missing and the camera's
agent may still hold it, ask the agent to upload it first (an ``UploadRequest`` on its command
queue) and check again later; otherwise concatenate the segments without re-encoding (ffmpeg's
concat demuxer, ``-c copy``), upload the file to the ``clips`` bucket and mark the clip READY,
listing its gaps. Procedure, states and crash safety: docs/design/clips.md.

``gtvision-central worker`` runs it, with the recordings' idle sweep (central/recordings.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from minio import Minio

from central import clips, recordings, segments
from central.video import build_clip
from shared.messages import ConfigHint, UploadRequest, WatchlistUpdate, encode
from shared.topology import agent_command_queue, declare_agent_queue

log = logging.getLogger(__name__)

Interval = tuple[datetime, datetime]

# How long a clip waits for footage its agent was asked to upload before it is made from what
# arrived (or FAILED when nothing did).
UPLOAD_WAIT_S = 300.0
RECHECK_S = 2.0
# After an unexpected error (object storage down, ffmpeg failing): retry later, a few times.
RETRY_S = 30.0
MAX_ATTEMPTS = 5
# The agent has nothing more to send once a heartbeat sent this long after the request reports
# no unsent video; the ingest gets this long again to store what it sent.
SETTLE_S = 2.0
INGEST_GRACE_S = 5.0
IDLE_SWEEP_S = 30.0
# A range of a clip's timeline may be this far off a segment's edge and still count as covered.
TOLERANCE_MS = 500


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def subtract(intervals: Sequence[Interval], holes: Sequence[Interval]) -> list[Interval]:
    """The parts of ``intervals`` not inside any of ``holes`` (both sorted or not)."""
    out: list[Interval] = []
    for start, end in intervals:
        pieces = [(start, end)]
        for h_start, h_end in holes:
            nxt: list[Interval] = []
            for s, e in pieces:
                if h_end <= s or h_start >= e:
                    nxt.append((s, e))
                    continue
                if s < h_start:
                    nxt.append((s, h_start))
                if h_end < e:
                    nxt.append((h_end, e))
            pieces = nxt
        out.extend(pieces)
    return out


def intervals_json(intervals: Sequence[Interval]) -> list[dict[str, str]]:
    return [{"start": s.isoformat(), "end": e.isoformat()} for s, e in intervals]


class CommandPublisher:
    """Publishes commands to agents' queues (central's own broker user), confirmed."""

    def __init__(self, amqp_url: str) -> None:
        self._url = amqp_url
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None

    async def publish(self, command: UploadRequest | WatchlistUpdate | ConfigHint) -> None:
        """Declare the agent's queue (idempotent) and publish; returns on the broker's ack."""
        if isinstance(command, UploadRequest):
            key = command.request_id
        else:
            key = command.hint_id if isinstance(command, ConfigHint) else command.update_id
        if self._channel is None:
            self._connection = await aio_pika.connect_robust(self._url, heartbeat=10, timeout=10)
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
        await declare_agent_queue(self._channel, command.agent_id)
        await self._channel.default_exchange.publish(
            aio_pika.Message(
                encode(command),
                content_type="application/json",
                type=command.type,
                message_id=str(key),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=agent_command_queue(command.agent_id),
            timeout=10,
        )

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = self._channel = None


class ClipWorker:
    """Works through due clips; ``run_once`` handles one, ``run`` loops until stopped."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        s3: Minio,
        amqp_url: str | None,
        *,
        upload_wait_s: float = UPLOAD_WAIT_S,
        recheck_s: float = RECHECK_S,
        poll_s: float = 1.0,
    ) -> None:
        self.pool = pool
        self.s3 = s3
        self.commands = CommandPublisher(amqp_url) if amqp_url else None
        self.upload_wait_s = upload_wait_s
        self.recheck_s = recheck_s
        self.poll_s = poll_s
        self.ready = self.failed = self.requests = 0
        self._last_sweep = float("-inf")

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: clips as they fall due, and now and then the recordings' idle
        sweep. Errors are logged and retried; the worker never dies of one clip."""
        try:
            while not stop.is_set():
                await self._sweep_recordings()
                try:
                    busy = await self.run_once()
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("clip worker: %r; retrying", exc)
                    busy = False
                if not busy:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.poll_s)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the broker connection, if one was opened."""
        if self.commands is not None:
            await self.commands.close()

    async def _sweep_recordings(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_sweep < IDLE_SWEEP_S:
            return
        self._last_sweep = loop.time()
        try:
            async with self.pool.acquire() as conn:
                stopped = await recordings.stop_idle(conn)
            if stopped:
                log.info("recordings: %d idle run(s) stopped", stopped)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("recordings idle sweep: %r", exc)

    async def run_once(self) -> bool:
        """Claim one due clip and move it on. Returns False when none was due."""
        async with self.pool.acquire() as conn:
            clip_id: UUID | None = None
            try:
                async with conn.transaction():
                    clip = await clips.claim_next(conn)
                    if clip is None:
                        return False
                    clip_id = clip["id"]
                    await self._work(conn, clip)
            except (OSError, asyncpg.PostgresError):
                raise
            except Exception as exc:
                # The claim's transaction rolled back; count the attempt in a new one.
                assert clip_id is not None
                log.exception("clip=%s: build failed", clip_id)
                failed = await clips.record_error(
                    conn, clip_id, f"attempt failed: {exc}", RETRY_S, MAX_ATTEMPTS
                )
                self.failed += int(failed)
        return True

    async def _work(self, conn: asyncpg.Connection, clip: dict[str, Any]) -> None:
        start, end = clip["start_time"], clip["end_time"]
        rows = await segments.list_segments(conn, clip["camera_id"], start, end, limit=10_000)
        _, gaps = segments.coverage(rows, start, end, TOLERANCE_MS)
        reason = ""
        if gaps:
            wait, reason, requested = await self._missing_footage(conn, clip, gaps)
            if wait:
                await clips.wait(conn, clip["id"], self.recheck_s, reason, requested)
                return
        if not rows:
            await clips.mark_failed(
                conn, clip["id"], f"no video at central for this range: {reason}",
                intervals_json(gaps),
            )  # fmt: skip
            self.failed += 1
            log.warning("clip=%s FAILED: no footage (%s)", clip["id"], reason)
            return
        with tempfile.TemporaryDirectory(prefix="gtv-clip-") as tmp:
            built = await build_clip(self.s3, rows, start, end, Path(tmp))
            key = clips.clip_key(clip["cidade_id"], clip["camera_id"], clip["id"])
            await asyncio.to_thread(
                self.s3.fput_object, "clips", key, str(built.path), content_type="video/mp4"
            )
        note = "starts at the keyframe at or before the requested start (no re-encoding)" + (
            f"; {len(gaps)} gap(s) without video ({reason})" if gaps else ""
        )
        await clips.mark_ready(
            conn, clip["id"], recording_id=rows[0]["run_id"], storage_path=f"clips/{key}",
            size_bytes=built.size_bytes, sha256=built.sha256, duration_ms=built.duration_ms,
            segments=len(rows), gaps=intervals_json(gaps), note=note,
        )  # fmt: skip
        self.ready += 1
        log.info(
            "clip=%s READY: %d segment(s), %d ms, %d gap(s)",
            clip["id"], len(rows), built.duration_ms, len(gaps),
        )  # fmt: skip

    async def _missing_footage(
        self, conn: asyncpg.Connection, clip: dict[str, Any], gaps: list[Interval]
    ) -> tuple[bool, str, bool]:
        """Whether to wait for footage an agent may still hold: (wait, why, asked just now).
        Not waiting means going on with what central has."""
        # The camera's agent; for a camera not linked to one, every active agent of its city
        # (an agent holds only its own cameras' video, so the others find nothing to send).
        agents = await conn.fetch(
            "SELECT a.id, a.last_heartbeat FROM cameras c JOIN agents a ON a.is_active"
            " AND (a.id = c.agent_id OR (c.agent_id IS NULL AND a.cidade_id = c.cidade_id))"
            " WHERE c.id = $1 ORDER BY a.id",
            clip["camera_id"],
        )
        losses = await conn.fetch(
            "SELECT start_time, end_time FROM loss_events WHERE camera_id = $1"
            " AND end_time > $2 AND start_time < $3",
            clip["camera_id"], gaps[0][0], gaps[-1][1],
        )  # fmt: skip
        unknown = subtract(gaps, [(r["start_time"], r["end_time"]) for r in losses])
        unknown = [(s, e) for s, e in unknown if e - s > timedelta(milliseconds=TOLERANCE_MS)]
        now = datetime.now(UTC)
        if not unknown:
            return False, "the agent reported this video lost", False
        if not agents:
            return False, "the camera has no active agent to ask", False
        names = ", ".join(str(a["id"]) for a in agents)
        waited = (now - clip["created_at"]).total_seconds()
        requested_at = clip["upload_requested_at"]
        if waited >= self.upload_wait_s:
            asked = "was asked to upload it" if requested_at else "could not be asked"
            why = f"the agent {asked} and nothing arrived within {self.upload_wait_s:g} s"
            return False, why, False
        if requested_at is not None:
            if all(_agent_settled(a["last_heartbeat"], requested_at, now) for a in agents):
                return False, "the agent reports no unsent video left to send", False
            return True, f"waiting for agent {names} to upload the video", False
        if self.commands is None:
            return True, "no broker configured to ask the agent; waiting for its backlog", False
        span = (unknown[0][0], unknown[-1][1])
        try:
            for a in agents:
                await self.commands.publish(
                    UploadRequest(
                        request_id=uuid.uuid5(
                            clip["id"], f"{a['id']}:{_ms(span[0])}-{_ms(span[1])}"
                        ),
                        agent_id=a["id"],
                        camera_id=clip["camera_id"],
                        start_ms=_ms(span[0]),
                        end_ms=_ms(span[1]),
                        reason=f"clip {clip['id']}",
                    )
                )
        except Exception as exc:  # broker down: ask again at the next check
            log.warning("clip=%s: upload request not sent (%r)", clip["id"], exc)
            return True, f"could not ask agent {names} yet ({exc!r})"[:300], False
        self.requests += 1
        log.info(
            "clip=%s: asked agent %s to upload camera=%s [%s, %s)",
            clip["id"], names, clip["camera_id"], span[0], span[1],
        )  # fmt: skip
        return True, f"asked agent {names} to upload the missing video", True


def _agent_settled(heartbeat: dict[str, Any] | None, requested_at: datetime, now: datetime) -> bool:
    """True once a heartbeat sent after the request says the agent has no unsent video, and
    the ingest has had time to store what it sent."""
    if not heartbeat or "sent_ms" not in heartbeat:
        return False
    sent = datetime.fromtimestamp(heartbeat["sent_ms"] / 1000, tz=UTC)
    if sent < requested_at + timedelta(seconds=SETTLE_S):
        return False
    pending = (heartbeat.get("outbox_pending") or {}).get("segment", 0)
    return bool(pending == 0 and now >= sent + timedelta(seconds=INGEST_GRACE_S))
