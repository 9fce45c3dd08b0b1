"""The sync checker: after a fault run, compare what an agent committed with what central holds.

Asserts the sync guarantees (docs/design/sync.md, "Fault testing"):

- every plate read committed in the agent's SQLite store is in PostgreSQL exactly once, and
  no two rows show the same read under different ids (a *visible* duplicate);
- every segment the agent registered (and did not record as lost) is in PostgreSQL once, its
  object is in S3 and holds exactly the registered bytes (size and SHA-256); no segment row
  points at a missing or different object;
- every loss event the agent queued is in PostgreSQL;
- central holds nothing for this agent that the agent did not commit;
- the agent's outbox is drained (nothing left unsent);
- the dead-letter queues hold exactly the poison the run injected (by message id). Expired
  heartbeats (state, not data; the broker dead-letters them after their TTL) are counted
  apart and are not failures.

``check_sync`` returns a ``SyncReport``; ``report.line()`` is what CI logs show, e.g.
``checker: reads 500/500 once, segments 12/12 verified, losses 0/0, dlq 1/1``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import aio_pika
import asyncpg
from minio import Minio

from central import storage
from shared.topology import CONSUMER_QUEUES, HEARTBEATS_QUEUE, THUMBNAILS_QUEUE

# Messages that are state (a newer one replaces them): their expiry is not a loss.
STATE_QUEUES = (HEARTBEATS_QUEUE.dead_letter_queue, THUMBNAILS_QUEUE.dead_letter_queue)


@dataclass
class DeadLetter:
    queue: str
    message_id: str | None
    routing_key: str | None
    reason: str  # central's x-gtvision-reason, or the broker's x-death reason


@dataclass
class SyncReport:
    reads_agent: int = 0
    reads_once: int = 0
    reads_missing: int = 0
    reads_duplicated: int = 0  # extra rows for a read (same id or same camera/plate/time)
    reads_unexpected: int = 0
    segments_agent: int = 0
    segments_verified: int = 0
    segments_missing: int = 0
    segments_bad_object: int = 0
    segments_unexpected: int = 0
    losses_agent: int = 0
    losses_central: int = 0
    outbox_unsent: dict[str, int] = field(default_factory=dict)
    dlq_expected: int = 0
    dlq_found: int = 0  # of the expected ones
    dlq_unexpected: list[DeadLetter] = field(default_factory=list)
    dlq_expired_state: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        return (
            f"checker: reads {self.reads_once}/{self.reads_agent} once "
            f"(missing {self.reads_missing}, duplicated {self.reads_duplicated}, "
            f"unexpected {self.reads_unexpected}), segments "
            f"{self.segments_verified}/{self.segments_agent} verified, losses "
            f"{self.losses_central}/{self.losses_agent}, dlq {self.dlq_found}/{self.dlq_expected}"
            + (f" (+{len(self.dlq_unexpected)} unexpected)" if self.dlq_unexpected else "")
            + (f", {self.dlq_expired_state} expired heartbeats" if self.dlq_expired_state else "")
            + (f", outbox unsent {self.outbox_unsent}" if self.outbox_unsent else "")
            + ("" if self.ok else f"; {len(self.problems)} problem(s)")
        )

    def counts(self) -> dict[str, Any]:
        return {
            "reads": self.reads_agent,
            "reads_once": self.reads_once,
            "lost": self.reads_missing + self.segments_missing + self.segments_bad_object,
            "duplicates": self.reads_duplicated,
            "unexpected": self.reads_unexpected + self.segments_unexpected,
            "segments": self.segments_agent,
            "segments_verified": self.segments_verified,
            "losses": self.losses_agent,
            "dlq_expected": self.dlq_expected,
            "dlq_found": self.dlq_found,
            "dlq_unexpected": len(self.dlq_unexpected),
            "outbox_unsent": sum(self.outbox_unsent.values()),
        }

    def raise_if_failed(self) -> None:
        if self.problems:
            raise AssertionError(self.line() + "\n" + "\n".join(self.problems[:30]))


@dataclass(frozen=True)
class AgentSide:
    reads: dict[UUID, tuple[UUID, str, int]]  # read_id -> (camera, plate, seen_ms)
    segments: dict[UUID, tuple[int, str]]  # segment_id -> (size, sha256), not lost/evicted
    losses: set[UUID]
    unsent: dict[str, int]


def read_agent(store_path: Path) -> AgentSide:
    """The agent's committed state, read-only (safe while the agent runs)."""
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        reads = {
            UUID(r[0]): (UUID(r[1]), r[2], r[3])
            for r in conn.execute("SELECT read_id, camera_id, plate, seen_ms FROM plate_reads")
        }
        segments = {
            UUID(r[0]): (int(r[1]), str(r[2]))
            for r in conn.execute(
                "SELECT segment_id, size_bytes, sha256 FROM segments "
                "WHERE lost_ms IS NULL AND (evicted_ms IS NULL OR synced_ms IS NOT NULL)"
            )
        }
        losses = {
            UUID(r[0]) for r in conn.execute("SELECT ref_id FROM outbox WHERE kind = 'loss_event'")
        }
        unsent = dict(
            conn.execute(
                "SELECT kind, count(*) FROM outbox WHERE sent_ms IS NULL AND dropped_ms IS NULL "
                "GROUP BY kind"
            ).fetchall()
        )
    finally:
        conn.close()
    return AgentSide(reads, segments, losses, unsent)


def _dead_letter_reason(headers: Mapping[str, Any]) -> str:
    """Central's own reason header, else the reason of the broker's first x-death entry."""
    reason = headers.get("x-gtvision-reason")
    if reason is not None:
        return reason.decode() if isinstance(reason, bytes) else str(reason)
    deaths = headers.get("x-death")
    first = deaths[0] if isinstance(deaths, list) and deaths else None
    why = first.get("reason", "unknown") if isinstance(first, dict) else "unknown"
    return f"broker: {why.decode() if isinstance(why, bytes) else why}"


async def dead_letters(amqp_url: str) -> list[DeadLetter]:
    """Every message waiting in the DLQs, read without taking it: nothing is acked, and
    closing the channel puts them all back."""
    found: list[DeadLetter] = []
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        channel = await conn.channel()
        for q in CONSUMER_QUEUES:
            queue = await channel.get_queue(q.dead_letter_queue)
            while (msg := await queue.get(no_ack=False, fail=False)) is not None:
                found.append(
                    DeadLetter(q.dead_letter_queue, msg.message_id, msg.routing_key,
                               _dead_letter_reason(msg.headers or {}))
                )  # fmt: skip
    return found


async def check_sync(
    store_path: Path,
    pool: asyncpg.Pool,
    s3: Minio,
    amqp_url: str,
    *,
    agent_id: UUID,
    city_id: UUID,
    expected_dlq: Mapping[str, Collection[str]] | None = None,
) -> SyncReport:
    """Compare the agent's store with central (PostgreSQL, S3, the DLQs); see the module doc.

    ``amqp_url`` needs read access to the DLQs (central's user). ``expected_dlq`` maps a DLQ
    name to the message ids of the poison the run injected there.
    """
    rep = SyncReport()
    agent = await asyncio.to_thread(read_agent, store_path)
    problems = rep.problems

    # Plate reads.
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, camera_id, plate, detected_at FROM lpr_events WHERE city_id = $1", city_id
        )
    rep.reads_agent = len(agent.reads)
    ids = Counter(r["id"] for r in rows)
    visible = Counter((r["camera_id"], r["plate"], r["detected_at"]) for r in rows)
    missing = agent.reads.keys() - ids.keys()
    unexpected = ids.keys() - agent.reads.keys()
    rep.reads_missing = len(missing)
    rep.reads_unexpected = len(unexpected)
    rep.reads_duplicated = sum(n - 1 for n in ids.values() if n > 1) + sum(
        n - 1 for n in visible.values() if n > 1
    )
    rep.reads_once = sum(1 for i in agent.reads if ids.get(i) == 1)
    if missing:
        problems.append(f"{len(missing)} plate read(s) never reached central, e.g. {min(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} plate read(s) in central the agent never committed")
    if rep.reads_duplicated:
        problems.append(f"{rep.reads_duplicated} duplicate plate read row(s) in central")

    # Segments and their objects.
    async with pool.acquire() as conn:
        segs = await conn.fetch(
            "SELECT id, bucket, object_key, size_bytes, sha256 FROM segments WHERE agent_id = $1",
            agent_id,
        )
    rep.segments_agent = len(agent.segments)
    seg_ids = Counter(r["id"] for r in segs)
    rep.segments_missing = len(agent.segments.keys() - seg_ids.keys())
    rep.segments_unexpected = len(seg_ids.keys() - agent.segments.keys())
    if rep.segments_missing:
        problems.append(f"{rep.segments_missing} segment(s) never reached central")
    if rep.segments_unexpected:
        problems.append(f"{rep.segments_unexpected} segment(s) in central the agent never had")

    def verify(row: asyncpg.Record) -> str | None:
        claimed = agent.segments.get(row["id"])
        if claimed is not None and (row["size_bytes"], row["sha256"].strip()) != claimed:
            return f"segment {row['id']}: central's size/hash differ from the agent's"
        try:
            storage.verify_blob(
                s3, row["bucket"], row["object_key"], row["size_bytes"], row["sha256"].strip()
            )
        except storage.BlobMismatch as exc:
            return f"segment {row['id']}: {exc}"
        return None

    for row in segs:
        err = await asyncio.to_thread(verify, row)
        if err is not None:
            rep.segments_bad_object += 1
            problems.append(err)
        elif row["id"] in agent.segments:
            rep.segments_verified += 1

    # Loss events.
    async with pool.acquire() as conn:
        losses = {
            r["id"]
            for r in await conn.fetch("SELECT id FROM loss_events WHERE agent_id = $1", agent_id)
        }
    rep.losses_agent = len(agent.losses)
    rep.losses_central = len(agent.losses & losses)
    if agent.losses - losses:
        problems.append(f"{len(agent.losses - losses)} loss event(s) never reached central")
    if losses - agent.losses:
        problems.append(f"{len(losses - agent.losses)} loss event(s) the agent never queued")

    # The outbox: everything sent.
    rep.outbox_unsent = {str(k): int(v) for k, v in agent.unsent.items()}
    if rep.outbox_unsent:
        problems.append(f"agent outbox not drained: {rep.outbox_unsent}")

    # Dead letters: exactly the injected poison.
    expected = {q: set(ids) for q, ids in (expected_dlq or {}).items()}
    rep.dlq_expected = sum(len(v) for v in expected.values())
    for dl in await dead_letters(amqp_url):
        if dl.message_id is not None and dl.message_id in expected.get(dl.queue, set()):
            expected[dl.queue].discard(dl.message_id)
            rep.dlq_found += 1
        elif dl.queue in STATE_QUEUES and dl.reason == "broker: expired":
            rep.dlq_expired_state += 1
        else:
            rep.dlq_unexpected.append(dl)
    for q, left in expected.items():
        if left:
            problems.append(f"{q}: expected poison {sorted(left)} is not there")
    for dl in rep.dlq_unexpected[:10]:
        problems.append(f"unexpected dead letter in {dl.queue}: {dl.message_id} ({dl.reason})")
    return rep
