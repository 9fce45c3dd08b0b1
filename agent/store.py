"""The agent's local store: SQLite (WAL) through sqlite-utils, one writer thread, with migrations.

Every write that must reach central commits together with its outbox row (docs/design/overview.md,
"Outbox"; segment steps, invariants and recovery: docs/design/segments.md). All methods of
``Store`` run on one dedicated thread, so there is exactly one writer and the event loop never
blocks on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID, uuid4

import sqlite_utils

from agent.eviction import Candidate, Eviction, coalesce_losses, plan_eviction
from shared.messages import LossEvent, LossReason, PlateRead, WatchlistAlert

T = TypeVar("T")

# Lower sends first: alerts and plate reads before status, before images, before video.
PRIORITY = {
    "alert": 0,
    "plate_read": 10,
    "loss_event": 15,
    "camera_status": 20,
    "thumbnail": 30,
    "crop": 32,  # a plate read's evidence JPEG: after thumbnails, before video
    "segment": 40,
}

# Each entry upgrades the schema by one version (PRAGMA user_version). Append only.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE segments (
        segment_id TEXT PRIMARY KEY,
        camera_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        path TEXT NOT NULL UNIQUE,
        start_ms INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        size_bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        codec TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX segments_camera_start ON segments (camera_id, start_ms);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        ref_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        sent_ms INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE UNIQUE INDEX outbox_kind_ref ON outbox (kind, ref_id);
    CREATE INDEX outbox_pending ON outbox (priority, id) WHERE sent_ms IS NULL;
    """,
    # docs/design/segments.md: runs (step 0), recovered times, recorded losses, the spool marker.
    """
    ALTER TABLE segments ADD COLUMN time_source TEXT NOT NULL DEFAULT 'live'
        CHECK (time_source IN ('live', 'recovered'));
    ALTER TABLE segments ADD COLUMN lost_ms INTEGER;
    ALTER TABLE segments ADD COLUMN lost_reason TEXT;
    CREATE INDEX segments_run_seq ON segments (run_id, seq);
    ALTER TABLE outbox ADD COLUMN dropped_ms INTEGER;
    DROP INDEX outbox_pending;
    CREATE INDEX outbox_pending ON outbox (priority, id)
        WHERE sent_ms IS NULL AND dropped_ms IS NULL;
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        camera_key TEXT NOT NULL,
        camera_id TEXT NOT NULL,
        started_ms INTEGER NOT NULL
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # Plate reads (one per vehicle passage): kept until central has them.
    """
    CREATE TABLE plate_reads (
        read_id TEXT PRIMARY KEY,
        camera_id TEXT NOT NULL,
        plate TEXT NOT NULL,
        confidence REAL NOT NULL,
        seen_ms INTEGER NOT NULL,
        segment_id TEXT,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX plate_reads_camera_seen ON plate_reads (camera_id, seen_ms);
    """,
    # docs/design/segments.md step 7: eviction under the disk budget. A segment is *evicted*
    # once the decision commits (evicted_ms) and *unlinked* once its file is gone (unlinked_ms).
    # synced_ms mirrors its outbox row's sent_ms (trigger), so the eviction order is two
    # partial-index scans. spool_usage holds the live rows' count and bytes (triggers), so a
    # budget check reads one row instead of summing the table.
    """
    ALTER TABLE segments ADD COLUMN synced_ms INTEGER;
    ALTER TABLE segments ADD COLUMN evicted_ms INTEGER;
    ALTER TABLE segments ADD COLUMN evicted_reason TEXT;
    ALTER TABLE segments ADD COLUMN unlinked_ms INTEGER;
    UPDATE segments SET synced_ms = (SELECT o.sent_ms FROM outbox o
        WHERE o.kind = 'segment' AND o.ref_id = segments.segment_id);
    CREATE INDEX segments_evict_synced ON segments (start_ms)
        WHERE lost_ms IS NULL AND evicted_ms IS NULL AND synced_ms IS NOT NULL;
    CREATE INDEX segments_evict_unsynced ON segments (start_ms)
        WHERE lost_ms IS NULL AND evicted_ms IS NULL AND synced_ms IS NULL;
    CREATE INDEX segments_unlink_pending ON segments (evicted_ms)
        WHERE evicted_ms IS NOT NULL AND unlinked_ms IS NULL;
    CREATE INDEX segments_start_size ON segments (start_ms, size_bytes);
    CREATE TRIGGER outbox_segment_synced AFTER UPDATE OF sent_ms ON outbox
        WHEN NEW.kind = 'segment' AND NEW.sent_ms IS NOT NULL AND OLD.sent_ms IS NULL
    BEGIN
        UPDATE segments SET synced_ms = NEW.sent_ms WHERE segment_id = NEW.ref_id;
    END;
    CREATE TABLE spool_usage (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        live_segments INTEGER NOT NULL,
        live_bytes INTEGER NOT NULL,
        evicted_segments INTEGER NOT NULL DEFAULT 0,
        evicted_bytes INTEGER NOT NULL DEFAULT 0,
        evicted_unsynced INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO spool_usage (id, live_segments, live_bytes)
        SELECT 1, count(*), coalesce(sum(size_bytes), 0) FROM segments WHERE lost_ms IS NULL;
    CREATE TRIGGER segments_usage_insert AFTER INSERT ON segments
        WHEN NEW.lost_ms IS NULL AND NEW.evicted_ms IS NULL
    BEGIN
        UPDATE spool_usage SET live_segments = live_segments + 1,
            live_bytes = live_bytes + NEW.size_bytes;
    END;
    CREATE TRIGGER segments_usage_gone AFTER UPDATE OF lost_ms, evicted_ms ON segments
        WHEN OLD.lost_ms IS NULL AND OLD.evicted_ms IS NULL
            AND (NEW.lost_ms IS NOT NULL OR NEW.evicted_ms IS NOT NULL)
    BEGIN
        UPDATE spool_usage SET live_segments = live_segments - 1,
            live_bytes = live_bytes - OLD.size_bytes;
    END;
    CREATE TRIGGER segments_usage_delete AFTER DELETE ON segments
        WHEN OLD.lost_ms IS NULL AND OLD.evicted_ms IS NULL
    BEGIN
        UPDATE spool_usage SET live_segments = live_segments - 1,
            live_bytes = live_bytes - OLD.size_bytes;
    END;
    """,
    # docs/design/segments.md "Time": the wall clock's state when the segment was stamped, and
    # how far its start was moved forward so a stepped-back clock cannot overlap earlier video.
    """
    ALTER TABLE segments ADD COLUMN clock_sync TEXT NOT NULL DEFAULT 'unknown'
        CHECK (clock_sync IN ('synced', 'unsynced', 'unknown'));
    ALTER TABLE segments ADD COLUMN clock_error_ms INTEGER;
    ALTER TABLE segments ADD COLUMN shifted_ms INTEGER NOT NULL DEFAULT 0;
    """,
    # docs/design/lpr.md "Persistence": a read's passage, box and evidence crop; a read made by
    # the agent's LPR waits (held = 1) until the segment holding its best frame is registered
    # (the trigger links it in the segment's own transaction) or its hold time passes, then its
    # outbox row is written (release_plate_reads). The local watchlist, matched on the agent.
    """
    ALTER TABLE plate_reads ADD COLUMN first_ms INTEGER;
    ALTER TABLE plate_reads ADD COLUMN last_ms INTEGER;
    ALTER TABLE plate_reads ADD COLUMN box TEXT;
    ALTER TABLE plate_reads ADD COLUMN crop_path TEXT;
    ALTER TABLE plate_reads ADD COLUMN crop_size_bytes INTEGER;
    ALTER TABLE plate_reads ADD COLUMN crop_sha256 TEXT;
    ALTER TABLE plate_reads ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE plate_reads ADD COLUMN hold_until_ms INTEGER;
    CREATE INDEX plate_reads_held ON plate_reads (hold_until_ms) WHERE held = 1;
    CREATE TRIGGER segments_link_plate_reads AFTER INSERT ON segments
    BEGIN
        UPDATE plate_reads SET segment_id = NEW.segment_id
            WHERE held = 1 AND segment_id IS NULL AND camera_id = NEW.camera_id
            AND seen_ms >= NEW.start_ms AND seen_ms < NEW.start_ms + NEW.duration_ms;
    END;
    CREATE TABLE watchlist (
        plate TEXT PRIMARY KEY,
        watchlist_id TEXT,
        reason TEXT NOT NULL DEFAULT '',
        loaded_ms INTEGER NOT NULL
    );
    """,
    # docs/design/segments.md "History": finished segments (unlinked or lost), by when they
    # finished, so the hourly purge of old history reads an index, not the table.
    """
    CREATE INDEX segments_history ON segments (coalesce(unlinked_ms, lost_ms))
        WHERE unlinked_ms IS NOT NULL OR lost_ms IS NOT NULL;
    """,
    # docs/design/segments.md "History": sent rows by kind and time, for the purge of plate
    # reads central has had for longer than the history is kept.
    """
    CREATE INDEX outbox_sent ON outbox (kind, sent_ms) WHERE sent_ms IS NOT NULL;
    """,
    # docs/design/lpr.md "Persistence": the bytes of the evidence crops the agent holds, kept
    # by triggers beside the video's, so the disk budget counts them.
    """
    ALTER TABLE spool_usage ADD COLUMN crop_bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE spool_usage SET crop_bytes = (SELECT coalesce(sum(crop_size_bytes), 0)
        FROM plate_reads WHERE crop_path IS NOT NULL);
    CREATE TRIGGER plate_reads_crop_insert AFTER INSERT ON plate_reads
        WHEN NEW.crop_path IS NOT NULL AND NEW.crop_size_bytes IS NOT NULL
    BEGIN
        UPDATE spool_usage SET crop_bytes = crop_bytes + NEW.crop_size_bytes;
    END;
    CREATE TRIGGER plate_reads_crop_delete AFTER DELETE ON plate_reads
        WHEN OLD.crop_path IS NOT NULL AND OLD.crop_size_bytes IS NOT NULL
    BEGIN
        UPDATE spool_usage SET crop_bytes = crop_bytes - OLD.crop_size_bytes;
    END;
    """,
    # docs/design/segments.md "History": dropped rows by time (superseded thumbnails), for the
    # purge of rows that leave nothing behind.
    """
    CREATE INDEX outbox_dropped ON outbox (dropped_ms) WHERE dropped_ms IS NOT NULL;
    """,
    # docs/design/lpr.md "Context frame": the whole frame of a read's evidence, beside its crop
    # (cameras with lpr.context_frame); its bytes count with the crops' in spool_usage.
    """
    ALTER TABLE plate_reads ADD COLUMN context_path TEXT;
    ALTER TABLE plate_reads ADD COLUMN context_size_bytes INTEGER;
    ALTER TABLE plate_reads ADD COLUMN context_sha256 TEXT;
    DROP TRIGGER plate_reads_crop_insert;
    DROP TRIGGER plate_reads_crop_delete;
    CREATE TRIGGER plate_reads_images_insert AFTER INSERT ON plate_reads
    BEGIN
        UPDATE spool_usage SET crop_bytes = crop_bytes
            + CASE WHEN NEW.crop_path IS NULL THEN 0 ELSE coalesce(NEW.crop_size_bytes, 0) END
            + CASE WHEN NEW.context_path IS NULL THEN 0
                   ELSE coalesce(NEW.context_size_bytes, 0) END;
    END;
    CREATE TRIGGER plate_reads_images_delete AFTER DELETE ON plate_reads
    BEGIN
        UPDATE spool_usage SET crop_bytes = crop_bytes
            - CASE WHEN OLD.crop_path IS NULL THEN 0 ELSE coalesce(OLD.crop_size_bytes, 0) END
            - CASE WHEN OLD.context_path IS NULL THEN 0
                   ELSE coalesce(OLD.context_size_bytes, 0) END;
    END;
    """,
]

TIME_SOURCES = ("live", "recovered")


@dataclass(frozen=True)
class Segment:
    segment_id: UUID
    camera_id: UUID
    run_id: UUID
    seq: int
    path: Path
    start_ms: int
    duration_ms: int
    size_bytes: int
    sha256: str
    codec: str
    # 'live': placed by the recorder from ffmpeg's stream times; 'recovered': derived at
    # start-up recovery for a file that had no row (docs/design/segments.md "Recovery").
    time_source: str = "live"
    # docs/design/segments.md "Time": the clock's state when the segment was stamped
    # ('synced', 'unsynced' or 'unknown'), its error bound, and how far the start was moved
    # forward so that a wall clock stepped back cannot overlap the camera's earlier video.
    clock_sync: str = "unknown"
    clock_error_ms: int | None = None
    shifted_ms: int = 0


@dataclass(frozen=True)
class LprRead:
    """One vehicle passage read by the agent's LPR (docs/design/lpr.md)."""

    read_id: UUID
    camera_id: UUID
    plate: str
    confidence: float
    seen_ms: int  # the best frame's time: the evidence crop's and the segment link's
    first_ms: int
    last_ms: int
    box: tuple[int, int, int, int]  # (x, y, w, h) of the plate on that frame
    crop_path: str | None
    crop_size_bytes: int | None
    crop_sha256: str | None
    # the whole frame of the crop (lpr.context_frame); only with a crop
    context_path: str | None = None
    context_size_bytes: int | None = None
    context_sha256: str | None = None


@dataclass(frozen=True)
class WatchEntry:
    plate: str
    watchlist_id: UUID | None = None
    reason: str = ""


@dataclass(frozen=True)
class SegmentFile:
    """A registered segment's file as the store expects to find it (recovery's I1 check)."""

    rowid: int
    segment_id: str
    path: Path
    size_bytes: int


@dataclass(frozen=True)
class SpoolUsage:
    live_segments: int
    live_bytes: int
    evicted_segments: int  # since the store was created
    evicted_bytes: int
    evicted_unsynced: int  # of those, never synced: recorded as losses
    crop_bytes: int = 0  # plate reads' evidence crops held (not evictable)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    kind: str
    ref_id: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class RawOutboxRow:
    """An outbox row as stored: ``payload`` is the JSON text (for a message-only row, the wire
    body itself), and (``priority``, ``id``) is its place in the sending order."""

    id: int
    priority: int
    kind: str
    ref_id: str
    payload: str
    attempts: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def open_db(path: Path) -> sqlite_utils.Database:
    """Open (creating if needed) and migrate the store. Must be called on the writer thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    db = sqlite_utils.Database(conn)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed segment/outbox row survives power loss, not only a process crash.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        with db.atomic():
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
    return db


def _statements(script: str) -> list[str]:
    """A migration's statements, split on the ``;`` that end one (a trigger's body has more)."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip().strip(";").strip():
                statements.append(pending)
            pending = ""
    if pending.strip().strip(";").strip():
        raise ValueError(f"incomplete statement in a migration: {pending[:80]!r}")
    return statements


class Store:
    """Async facade over the SQLite store; every call runs on the single writer thread.

    ``agent_id`` names the publisher in the loss events the store writes (``mark_lost``,
    ``evict``); a store opened without one refuses to record a loss.
    """

    def __init__(self, path: Path, agent_id: UUID | None = None) -> None:
        self.path = path
        self.agent_id = agent_id
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite_utils.Database | None = None
        self._outbox_changed = asyncio.Event()  # set when this store commits outbox rows

    async def wait_for_outbox(self, timeout_s: float) -> None:
        """Until a new outbox row is committed (by this store) or ``timeout_s`` passes.

        Lets the relay sleep without adding its poll interval to every read's latency; rows
        written through another connection are found when the timeout expires.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outbox_changed.wait(), timeout_s)
        self._outbox_changed.clear()

    async def open(self) -> None:
        self._db = await self._run(lambda: open_db(self.path))

    async def close(self) -> None:
        if self._db is not None:
            db = self._db
            await self._run(db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def add_segment(self, seg: Segment) -> bool:
        """Register a closed segment and its outbox row in one transaction.

        Idempotent on the file path: a segment already registered returns False.
        """
        added = await self._run(lambda: self._add_segment(seg))
        self._outbox_changed.set()
        return added

    def _add_segment(self, seg: Segment) -> bool:
        db = self.db
        if seg.time_source not in TIME_SOURCES:
            raise ValueError(f"time_source {seg.time_source!r}")
        # docs/design/segments.md step 4: segment row and outbox row commit together. The path
        # check is in the same transaction on the single writer thread: a file gets at most one
        # segment_id, whoever (recorder or recovery) registers it first.
        with db.atomic():
            if db.execute("SELECT 1 FROM segments WHERE path = ?", [str(seg.path)]).fetchone():
                return False
            db.table("segments").insert(
                {
                    "segment_id": str(seg.segment_id),
                    "camera_id": str(seg.camera_id),
                    "run_id": str(seg.run_id),
                    "seq": seg.seq,
                    "path": str(seg.path),
                    "start_ms": seg.start_ms,
                    "duration_ms": seg.duration_ms,
                    "size_bytes": seg.size_bytes,
                    "sha256": seg.sha256,
                    "codec": seg.codec,
                    "created_ms": _now_ms(),
                    "time_source": seg.time_source,
                    "clock_sync": seg.clock_sync,
                    "clock_error_ms": seg.clock_error_ms,
                    "shifted_ms": seg.shifted_ms,
                }
            )
            db.table("outbox").insert(
                {
                    "kind": "segment",
                    "priority": PRIORITY["segment"],
                    "ref_id": str(seg.segment_id),
                    "payload": json.dumps({"segment_id": str(seg.segment_id)}),
                    "created_ms": _now_ms(),
                }
            )
        return True

    async def pending(self, limit: int = 100) -> list[OutboxRow]:
        """Unsent outbox rows, highest priority first, oldest first within a priority."""

        def query() -> list[OutboxRow]:
            rows = self.db.execute(
                "SELECT id, kind, ref_id, payload, attempts FROM outbox "
                "WHERE sent_ms IS NULL AND dropped_ms IS NULL ORDER BY priority, id LIMIT ?",
                [limit],
            ).fetchall()
            return [OutboxRow(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

        return await self._run(query)

    async def pending_of(
        self,
        kinds: Collection[str],
        limit: int,
        after: tuple[int, int] | None = None,
        below: int | None = None,
        through: int | None = None,
        newer: tuple[int, int] | None = None,
    ) -> list[RawOutboxRow]:
        """Unsent rows of ``kinds`` in sending order, after (priority, id) ``after`` if given:
        the relay reads on past the rows it has in flight without reading them again. With
        ``below``, only rows of a priority under it (more urgent rows that came meanwhile);
        with ``through``, only rows of an id up to it (the backlog a drain started with); with
        ``newer`` = (priority, id), only rows of that priority with a higher id (rows written
        since, read apart from that backlog)."""
        if newer is not None and (after is not None or below is not None):
            raise ValueError("newer reads one priority: not with after or below")
        marks = ", ".join("?" * len(kinds))
        # "+kind": not the (kind, ref_id) index, which would read every row of the kinds ever
        # sent and sort them; the pending index holds only unsent rows, in sending order.
        # ``newer`` as "priority = ? AND id > ?": the index is entered at that row, where a row
        # value with a bound on the priority would walk every unsent row of the priority first.
        sql = (
            "SELECT id, priority, kind, ref_id, payload, attempts FROM outbox "  # noqa: S608
            f"WHERE sent_ms IS NULL AND dropped_ms IS NULL AND +kind IN ({marks}) "
            "AND priority >= ? "
            + ("AND (priority, id) > (?, ?) " if after is not None else "")
            + ("AND priority < ? " if below is not None else "")
            + ("AND id <= ? " if through is not None else "")
            + ("AND priority = ? AND id > ? " if newer is not None else "")
            + "ORDER BY priority, id LIMIT ?"
        )
        lowest = min(PRIORITY.get(k, 0) for k in kinds)
        params = [*kinds, lowest, *(after or ())]
        params += [v for v in (below, through) if v is not None] + [*(newer or ()), limit]

        def query() -> list[RawOutboxRow]:
            return [RawOutboxRow(*r) for r in self.db.execute(sql, params).fetchall()]

        return await self._run(query)

    async def outbox_head(self) -> int:
        """The newest outbox row's id (0 if none): rows written later have higher ids."""

        def query() -> int:
            row = self.db.execute("SELECT max(id) FROM outbox").fetchone()
            return int(row[0] or 0)

        return await self._run(query)

    async def segment(self, segment_id: str) -> Segment | None:
        return await self._run(lambda: self._segment_where("segment_id = ?", [segment_id]))

    def _segment_where(self, where: str, params: list[Any]) -> Segment | None:
        # ``where`` is one of this class's literals; values are always bound parameters.
        sql = (
            "SELECT segment_id, camera_id, run_id, seq, path, start_ms, duration_ms, "
            "size_bytes, sha256, codec, time_source, clock_sync, clock_error_ms, shifted_ms "
            "FROM segments WHERE " + where
        )
        row = self.db.execute(sql, params).fetchone()
        if row is None:
            return None
        return Segment(
            UUID(row[0]), UUID(row[1]), UUID(row[2]), row[3], Path(row[4]),
            row[5], row[6], row[7], row[8], row[9], row[10], row[11], row[12], row[13],
        )  # fmt: skip

    async def camera_end_ms(self, camera_id: UUID) -> int | None:
        """Where the camera's latest registered segment ends (None: no segment yet)."""

        def query() -> int | None:
            row = self.db.execute(
                "SELECT start_ms + duration_ms FROM segments WHERE camera_id = ? "
                "ORDER BY start_ms DESC LIMIT 1",
                [str(camera_id)],
            ).fetchone()
            return None if row is None else int(row[0])

        return await self._run(query)

    # --- docs/design/segments.md: runs, recovery, losses -------------------------------------

    async def add_run(
        self, run_id: UUID, camera_key: str, camera_id: UUID, started_ms: int
    ) -> None:
        """Step 0: record which camera a run directory belongs to, before ffmpeg starts."""

        def insert() -> None:
            with self.db.atomic():
                self.db.execute(
                    "INSERT INTO runs (run_id, camera_key, camera_id, started_ms) "
                    "VALUES (?, ?, ?, ?)",
                    [str(run_id), camera_key, str(camera_id), started_ms],
                )

        await self._run(insert)

    async def run_camera(self, run_id: UUID) -> UUID | None:
        """The camera a run recorded: from its runs row, else from any segment of the run."""

        def query() -> UUID | None:
            row = self.db.execute(
                "SELECT camera_id FROM runs WHERE run_id = ? UNION ALL "
                "SELECT camera_id FROM segments WHERE run_id = ? LIMIT 1",
                [str(run_id), str(run_id)],
            ).fetchone()
            return None if row is None else UUID(row[0])

        return await self._run(query)

    async def forget_run(self, run_id: UUID) -> bool:
        """Delete a runs row that no segment refers to (a run that left nothing behind)."""

        def delete() -> bool:
            with self.db.atomic():
                cur = self.db.execute(
                    "DELETE FROM runs WHERE run_id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM segments WHERE run_id = ?)",
                    [str(run_id), str(run_id)],
                )
                return bool(cur.rowcount)

        return await self._run(delete)

    async def runs(self) -> list[tuple[UUID, str]]:
        """Every recorded run as (run_id, camera_key)."""

        def query() -> list[tuple[UUID, str]]:
            rows = self.db.execute("SELECT run_id, camera_key FROM runs ORDER BY started_ms")
            return [(UUID(r[0]), str(r[1])) for r in rows.fetchall()]

        return await self._run(query)

    async def run_paths(self, run_id: UUID) -> set[str]:
        """Paths of every segment row of a run, lost ones included (they keep their path)."""

        def query() -> set[str]:
            rows = self.db.execute("SELECT path FROM segments WHERE run_id = ?", [str(run_id)])
            return {r[0] for r in rows.fetchall()}

        return await self._run(query)

    async def segment_at(self, run_id: UUID, seq: int) -> Segment | None:
        """The segment registered for file number ``seq`` of a run, if any."""
        return await self._run(
            lambda: self._segment_where("run_id = ? AND seq = ?", [str(run_id), seq])
        )

    async def segment_files(self, after_rowid: int = 0, limit: int = 1000) -> list[SegmentFile]:
        """Rows not marked lost, in rowid order from ``after_rowid``: a page of files to check."""

        def query() -> list[SegmentFile]:
            rows = self.db.execute(
                "SELECT rowid, segment_id, path, size_bytes FROM segments "
                "WHERE lost_ms IS NULL AND evicted_ms IS NULL AND rowid > ? "
                "ORDER BY rowid LIMIT ?",
                [after_rowid, limit],
            ).fetchall()
            return [SegmentFile(r[0], r[1], Path(r[2]), r[3]) for r in rows]

        return await self._run(query)

    async def mark_lost(
        self, segment_id: str, reason: str, at_ms: int, kind: LossReason = "file_missing"
    ) -> bool:
        """Record that a segment's file is gone, and stop its upload. One transaction.

        The row stays (its path stays reserved, so a file reappearing there is never registered
        again as another segment); its unsent outbox row is dropped so the relay never retries
        a file that cannot come back, and a ``loss_event`` row (reason ``kind``) tells central.
        Returns True if that outbox row had not been sent, i.e. central never received the
        segment. Idempotent; an evicted segment is left alone (step 7 accounted for it).
        """

        def update() -> bool:
            with self.db.atomic():
                self.db.execute(
                    "UPDATE segments SET lost_ms = ?, lost_reason = ? "
                    "WHERE segment_id = ? AND lost_ms IS NULL AND evicted_ms IS NULL",
                    [at_ms, reason[:500], segment_id],
                )
                cur = self.db.execute(
                    "UPDATE outbox SET dropped_ms = ?, last_error = ? "
                    "WHERE kind = 'segment' AND ref_id = ? "
                    "AND sent_ms IS NULL AND dropped_ms IS NULL",
                    [at_ms, f"segment lost: {reason}"[:500], segment_id],
                )
                if not cur.rowcount:
                    return False
                rows = self._candidate_rows("s.segment_id = ?", [segment_id], "", 1)
                if rows:
                    group = [c for c in rows if c.segment_id == segment_id]
                    self._insert_loss(self._loss_event(group, kind), at_ms)
                return True

        result = await self._run(update)
        self._outbox_changed.set()
        return result

    # --- docs/design/segments.md step 7: eviction under the disk budget ----------------------

    def _loss_event(self, group: list[Candidate], reason: LossReason) -> LossEvent:
        if self.agent_id is None:
            raise RuntimeError("this store has no agent_id: it cannot record a loss for central")
        return LossEvent(
            loss_id=uuid4(),
            agent_id=self.agent_id,
            camera_id=UUID(group[0].camera_id),
            start_ms=min(c.start_ms for c in group),
            end_ms=max(c.end_ms for c in group),
            segments=len(group),
            size_bytes=sum(c.size_bytes for c in group),
            reason=reason,
        )

    def _insert_loss(self, loss: LossEvent, now_ms: int) -> None:
        """A loss_event outbox row whose payload is the wire message (writer thread, inside
        the caller's transaction)."""
        self.db.execute(
            "INSERT INTO outbox (kind, priority, ref_id, payload, created_ms)"
            " VALUES ('loss_event', ?, ?, ?, ?)",
            [PRIORITY["loss_event"], str(loss.loss_id), loss.model_dump_json(), now_ms],
        )

    def _candidate_rows(
        self, where: str, params: list[Any], order: str, limit: int, offset: int = 0
    ) -> list[Candidate]:
        # ``where`` and ``order`` are this class's literals; values are bound parameters.
        sql = (
            "SELECT s.segment_id, s.camera_id, s.run_id, s.seq, s.path, s.start_ms, "  # noqa: S608
            "s.duration_ms, s.size_bytes, s.synced_ms IS NOT NULL FROM segments s "
            f"WHERE {where} {order} LIMIT ? OFFSET ?"
        )
        rows = self.db.execute(sql, [*params, limit, offset]).fetchall()
        return [Candidate(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8])) for r in rows]

    def _oldest(self, synced: bool, need_bytes: int, limit: int) -> list[Candidate]:
        """Live segments, synced or not, oldest first, until they hold ``need_bytes`` or
        ``limit`` rows. Each query walks one partial index (segments_evict_*)."""
        where = "s.lost_ms IS NULL AND s.evicted_ms IS NULL AND s.synced_ms IS " + (
            "NOT NULL" if synced else "NULL"
        )
        found: list[Candidate] = []
        held = 0
        while held < need_bytes and len(found) < limit:
            page = self._candidate_rows(
                where, [], "ORDER BY s.start_ms, s.rowid", min(256, limit - len(found)), len(found)
            )
            found += page
            held += sum(c.size_bytes for c in page)
            if len(page) < 256:
                break
        return found

    async def evict(
        self, need_bytes: int, at_ms: int, max_segments: int = 1000, reason: str = "disk budget"
    ) -> Eviction:
        """Step 7's recorded step, in one transaction: choose segments holding at least
        ``need_bytes`` (synced ones oldest first, then unsynced ones oldest first; at most
        ``max_segments``), mark them evicted, drop the unsynced ones' outbox rows and queue one
        ``loss_event`` per run of consecutive unsynced segments of a camera. The caller then
        unlinks the files (``Eviction.paths``) and calls ``mark_unlinked``. Plate reads and
        every other outbox row are never touched."""

        def work() -> Eviction:
            with self.db.atomic():
                synced = self._oldest(True, need_bytes, max_segments)
                short = need_bytes - sum(c.size_bytes for c in synced)
                room = max_segments - len(synced)
                unsynced = self._oldest(False, short, room) if short > 0 and room > 0 else []
                chosen = plan_eviction(need_bytes, [*synced, *unsynced], max_segments)
                self.db.conn.executemany(
                    "UPDATE segments SET evicted_ms = ?, evicted_reason = ? "
                    "WHERE segment_id = ? AND lost_ms IS NULL AND evicted_ms IS NULL",
                    [(at_ms, reason, c.segment_id) for c in chosen],
                )
                lost = [c for c in chosen if not c.synced]
                self.db.execute(
                    "UPDATE spool_usage SET evicted_segments = evicted_segments + ?, "
                    "evicted_bytes = evicted_bytes + ?, evicted_unsynced = evicted_unsynced + ?",
                    [len(chosen), sum(c.size_bytes for c in chosen), len(lost)],
                )
                self.db.conn.executemany(
                    "UPDATE outbox SET dropped_ms = ?, last_error = ? WHERE kind = 'segment' "
                    "AND ref_id = ? AND sent_ms IS NULL AND dropped_ms IS NULL",
                    [(at_ms, f"segment evicted unsynced: {reason}", c.segment_id) for c in lost],
                )
                losses = [self._loss_event(g, "disk_budget") for g in coalesce_losses(lost)]
                for loss in losses:
                    self._insert_loss(loss, at_ms)
                finished = self._finished_runs({c.run_id for c in chosen})
            return Eviction(tuple(chosen), tuple(losses), frozenset(finished))

        result = await self._run(work)
        self._outbox_changed.set()
        return result

    def _finished_runs(self, run_ids: set[str]) -> set[str]:
        """Those of ``run_ids`` whose camera has started a newer run since: their ffmpeg is
        gone, so an empty run directory can be removed."""
        finished = set()
        for run_id in run_ids:
            if self.db.execute(
                "SELECT 1 FROM runs r JOIN runs n ON n.camera_key = r.camera_key "
                "AND n.started_ms > r.started_ms WHERE r.run_id = ? LIMIT 1",
                [run_id],
            ).fetchone():
                finished.add(run_id)
        return finished

    async def unlink_pending(self, limit: int = 1000) -> list[tuple[str, Path]]:
        """Evicted segments whose file may still exist (the unlink not yet recorded):
        (segment_id, path), oldest eviction first."""

        def query() -> list[tuple[str, Path]]:
            rows = self.db.execute(
                "SELECT segment_id, path FROM segments WHERE evicted_ms IS NOT NULL "
                "AND unlinked_ms IS NULL ORDER BY evicted_ms LIMIT ?",
                [limit],
            ).fetchall()
            return [(r[0], Path(r[1])) for r in rows]

        return await self._run(query)

    async def mark_unlinked(self, segment_ids: list[str], at_ms: int) -> None:
        """Record that evicted segments' files are gone (after unlink and directory fsync)."""

        def update() -> None:
            with self.db.atomic():
                self.db.conn.executemany(
                    "UPDATE segments SET unlinked_ms = ? "
                    "WHERE segment_id = ? AND evicted_ms IS NOT NULL AND unlinked_ms IS NULL",
                    [(at_ms, i) for i in segment_ids],
                )

        if segment_ids:
            await self._run(update)

    async def spool_usage(self) -> SpoolUsage:
        """What the spool must hold (segments neither lost nor evicted) and what eviction has
        removed so far. One row, kept by triggers and ``evict``: cheap enough for every budget
        check."""

        def query() -> SpoolUsage:
            row = self.db.execute(
                "SELECT live_segments, live_bytes, evicted_segments, evicted_bytes, "
                "evicted_unsynced, crop_bytes FROM spool_usage WHERE id = 1"
            ).fetchone()
            return SpoolUsage(*(int(v) for v in row))

        return await self._run(query)

    async def recorded_since(self, since_ms: int) -> tuple[int, int, int | None]:
        """(segments, bytes, earliest start_ms) recorded from ``since_ms`` on, whatever became
        of them since: the measured bitrate for retention estimates."""

        def query() -> tuple[int, int, int | None]:
            row = self.db.execute(
                "SELECT count(*), coalesce(sum(size_bytes), 0), min(start_ms) FROM segments "
                "WHERE start_ms >= ?",
                [since_ms],
            ).fetchone()
            return int(row[0]), int(row[1]), None if row[2] is None else int(row[2])

        return await self._run(query)

    async def oldest_live_ms(self) -> int | None:
        """Start of the oldest segment the spool still holds."""

        def query() -> int | None:
            # Two queries, each answered from one partial index's first entry.
            starts = [
                self.db.execute(
                    "SELECT min(start_ms) FROM segments WHERE lost_ms IS NULL "
                    "AND evicted_ms IS NULL AND synced_ms IS NULL"
                ).fetchone()[0],
                self.db.execute(
                    "SELECT min(start_ms) FROM segments WHERE lost_ms IS NULL "
                    "AND evicted_ms IS NULL AND synced_ms IS NOT NULL"
                ).fetchone()[0],
            ]
            known = [int(s) for s in starts if s is not None]
            return min(known) if known else None

        return await self._run(query)

    async def drop_row(self, outbox_id: int, reason: str) -> None:
        """Stop sending an outbox row that can never be sent (e.g. a thumbnail whose file is
        gone). Commits."""

        def update() -> None:
            with self.db.atomic():
                self.db.execute(
                    "UPDATE outbox SET dropped_ms = ?, last_error = ? WHERE id = ?",
                    [_now_ms(), reason[:500], outbox_id],
                )

        await self._run(update)

    async def get_meta(self, key: str) -> str | None:
        def query() -> str | None:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
            return None if row is None else str(row[0])

        return await self._run(query)

    async def set_meta(self, key: str, value: str) -> None:
        def upsert() -> None:
            with self.db.atomic():
                self.db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [key, value],
                )

        await self._run(upsert)

    async def live_segment_count(self) -> int:
        """Segment rows whose file the spool must still hold (neither lost nor evicted)."""

        def query() -> int:
            n: int = self.db.execute(
                "SELECT count(*) FROM segments WHERE lost_ms IS NULL AND evicted_ms IS NULL"
            ).fetchone()[0]
            return n

        return await self._run(query)

    async def mark_sent(self, outbox_id: int) -> None:
        """Record that the broker acknowledged the row (step 6). Commits."""
        await self.mark_sent_many([outbox_id])

    async def mark_sent_many(self, outbox_ids: list[int]) -> None:
        """Record broker acks for many rows in one transaction (one fsync). Commits."""

        def update() -> None:
            now = _now_ms()
            with self.db.atomic():
                self.db.conn.executemany(
                    "UPDATE outbox SET sent_ms = ?, last_error = NULL WHERE id = ?",
                    [(now, i) for i in outbox_ids],
                )

        if outbox_ids:
            await self._run(update)

    # Segments central asked for (a clip needs them, docs/design/clips.md): after thumbnails
    # (a few KB, the newest per camera), before the rest of the video backlog.
    REQUESTED_SEGMENT_PRIORITY = 35

    async def prioritize_segments(self, camera_id: UUID, start_ms: int, end_ms: int) -> int:
        """Move the camera's unsent segments that overlap [start_ms, end_ms) ahead of the other
        video, for an upload request from central. Idempotent. Returns how many unsent
        segments the range holds (0: nothing here to send: never recorded, evicted, lost or
        already sent). Commits."""

        def update() -> int:
            with self.db.atomic():
                rows = self.db.execute(
                    "SELECT o.id FROM segments s JOIN outbox o"
                    " ON o.kind = 'segment' AND o.ref_id = s.segment_id"
                    " WHERE s.camera_id = ? AND s.start_ms < ? AND s.start_ms + s.duration_ms > ?"
                    # A segment lasts at most 120 s: bounds the index range from below too.
                    " AND s.start_ms > ? AND o.sent_ms IS NULL AND o.dropped_ms IS NULL",
                    [str(camera_id), end_ms, start_ms, start_ms - 120_000],
                ).fetchall()
                self.db.conn.executemany(
                    "UPDATE outbox SET priority = ? WHERE id = ? AND priority > ?",
                    [(self.REQUESTED_SEGMENT_PRIORITY, r[0], self.REQUESTED_SEGMENT_PRIORITY)
                     for r in rows],
                )  # fmt: skip
            return len(rows)

        found = await self._run(update)
        if found:
            self._outbox_changed.set()
        return found

    async def add_thumbnail(self, thumb: dict[str, Any]) -> list[str]:
        """Queue a thumbnail (payload: thumbnail_id, camera_id, taken_ms, path, size_bytes,
        sha256) and drop the camera's older unsent ones: only the newest view is worth sending
        after an outage. Returns the dropped files' paths, for the caller to delete. Commits."""

        def insert() -> list[str]:
            now = _now_ms()
            with self.db.atomic():
                older = self.db.execute(
                    "SELECT id, json_extract(payload, '$.path') FROM outbox"
                    " WHERE kind = 'thumbnail' AND sent_ms IS NULL AND dropped_ms IS NULL"
                    " AND json_extract(payload, '$.camera_id') = ?",
                    [thumb["camera_id"]],
                ).fetchall()
                self.db.conn.executemany(
                    "UPDATE outbox SET dropped_ms = ? WHERE id = ?", [(now, r[0]) for r in older]
                )
                self.db.execute(
                    "INSERT INTO outbox (kind, priority, ref_id, payload, created_ms)"
                    " VALUES ('thumbnail', ?, ?, ?, ?)",
                    [PRIORITY["thumbnail"], thumb["thumbnail_id"], json.dumps(thumb), now],
                )
            return [r[1] for r in older]

        result = await self._run(insert)
        self._outbox_changed.set()
        return result

    async def add_plate_reads(self, reads: list[PlateRead]) -> int:
        """Register plate reads with their outbox rows, all in one transaction. Idempotent on
        ``read_id``; returns how many were new. The outbox payload is the wire message."""

        def insert() -> int:
            now = _now_ms()
            new = 0
            with self.db.atomic():
                for read in reads:
                    cur = self.db.execute(
                        "INSERT OR IGNORE INTO plate_reads (read_id, camera_id, plate, confidence,"
                        " seen_ms, segment_id, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [str(read.read_id), str(read.camera_id), read.plate, read.confidence,
                         read.seen_ms, str(read.segment_id) if read.segment_id else None, now],
                    )  # fmt: skip
                    if cur.rowcount:
                        new += 1
                        self.db.execute(
                            "INSERT INTO outbox (kind, priority, ref_id, payload, created_ms)"
                            " VALUES ('plate_read', ?, ?, ?, ?)",
                            [
                                PRIORITY["plate_read"],
                                str(read.read_id),
                                read.model_dump_json(),
                                now,
                            ],
                        )
            return new

        result = await self._run(insert)
        self._outbox_changed.set()
        return result

    async def mark_failed(self, outbox_id: int, error: str) -> None:
        """Count a failed attempt and keep its reason for `status`. Commits."""

        def update() -> None:
            with self.db.atomic():
                self.db.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                    [error[:500], outbox_id],
                )

        await self._run(update)

    async def sent_plate_reads(
        self, before_ms: int, limit: int = 1000
    ) -> list[tuple[str, tuple[str, ...]]]:
        """Plate reads central has had since before ``before_ms`` (the read sent, its crop sent
        or dropped, or none): (read_id, its image files: crop, context frame), for
        ``purge_plate_reads``."""

        def query() -> list[tuple[str, tuple[str, ...]]]:
            rows = self.db.execute(
                "SELECT p.read_id, p.crop_path, p.context_path FROM outbox o"
                " JOIN plate_reads p ON p.read_id = o.ref_id"
                " WHERE o.kind = 'plate_read' AND o.sent_ms IS NOT NULL AND o.sent_ms < ?"
                " AND NOT EXISTS (SELECT 1 FROM outbox c WHERE c.kind = 'crop'"
                " AND c.ref_id = p.read_id AND c.sent_ms IS NULL AND c.dropped_ms IS NULL)"
                " LIMIT ?",
                [before_ms, limit],
            ).fetchall()
            return [(r[0], tuple(f for f in r[1:] if f)) for r in rows]

        return await self._run(query)

    async def purge_plate_reads(self, read_ids: list[str]) -> int:
        """Forget these reads (from ``sent_plate_reads``, their crop files already unlinked)
        and their read and crop outbox rows, in one transaction. Returns reads forgotten."""

        def purge() -> int:
            if not read_ids:
                return 0
            marks = ",".join("?" * len(read_ids))
            with self.db.atomic():
                self.db.execute(
                    f"DELETE FROM outbox WHERE kind IN ('plate_read', 'crop')"  # noqa: S608
                    f" AND ref_id IN ({marks})",
                    read_ids,
                )
                n: int = self.db.execute(
                    f"DELETE FROM plate_reads WHERE read_id IN ({marks})",  # noqa: S608
                    read_ids,
                ).rowcount
            return n

        return await self._run(purge)

    async def purge_history(self, before_ms: int, limit: int = 1000) -> int:
        """docs/design/segments.md "History": forget at most ``limit`` segments whose story is
        over (evicted and unlinked, or lost) before ``before_ms``, with their outbox rows and
        the runs left without segments, in one transaction. Live segments, unsent rows and
        plate reads are never touched; the spool's counters do not change (only finished rows
        go). Returns segment rows forgotten."""

        def purge() -> int:
            with self.db.atomic():
                rows = self.db.execute(
                    "SELECT segment_id, run_id FROM segments WHERE (unlinked_ms IS NOT NULL"
                    " OR lost_ms IS NOT NULL) AND coalesce(unlinked_ms, lost_ms) < ? LIMIT ?",
                    [before_ms, limit],
                ).fetchall()
                if not rows:
                    return 0
                ids = [r[0] for r in rows]
                marks = ",".join("?" * len(ids))
                self.db.execute(
                    f"DELETE FROM outbox WHERE kind = 'segment' AND ref_id IN ({marks})",  # noqa: S608
                    ids,
                )
                self.db.execute(f"DELETE FROM segments WHERE segment_id IN ({marks})", ids)  # noqa: S608
                # A run left without segments is over (a running one always has its newest
                # segments live); its directory went with its last file (step 7).
                runs = sorted({r[1] for r in rows})
                self.db.execute(
                    f"DELETE FROM runs WHERE run_id IN ({','.join('?' * len(runs))})"  # noqa: S608
                    " AND NOT EXISTS (SELECT 1 FROM segments s WHERE s.run_id = runs.run_id)",
                    runs,
                )
            return len(ids)

        return await self._run(purge)

    async def purge_sent_rows(self, before_ms: int, limit: int = 1000) -> int:
        """docs/design/segments.md "History": forget at most ``limit`` outbox rows of the kinds
        that leave nothing behind on the agent (thumbnails, loss events, watchlist alerts) sent
        or dropped before ``before_ms``. Unsent rows are never touched. Returns rows forgotten."""

        def purge() -> int:
            with self.db.atomic():
                cur = self.db.execute(
                    "DELETE FROM outbox WHERE id IN ("
                    " SELECT id FROM outbox WHERE kind IN ('thumbnail', 'loss_event',"
                    " 'watchlist_alert') AND sent_ms IS NOT NULL AND sent_ms < ?"
                    " UNION ALL SELECT id FROM outbox WHERE dropped_ms IS NOT NULL"
                    " AND dropped_ms < ? AND kind = 'thumbnail' LIMIT ?)",
                    [before_ms, before_ms, limit],
                )
                return int(cur.rowcount)

        return await self._run(purge)

    async def backlog(self) -> dict[str, Any]:
        """Unsent rows per kind and the age of the oldest, for `status` and heartbeats."""

        def query() -> dict[str, Any]:
            per_kind = dict(
                self.db.execute(
                    "SELECT kind, count(*) FROM outbox "
                    "WHERE sent_ms IS NULL AND dropped_ms IS NULL GROUP BY kind"
                ).fetchall()
            )
            oldest = self.db.execute(
                "SELECT min(created_ms) FROM outbox WHERE sent_ms IS NULL AND dropped_ms IS NULL"
            ).fetchone()[0]
            sent = self.db.execute(
                "SELECT count(*) FROM outbox WHERE sent_ms IS NOT NULL"
            ).fetchone()[0]
            lost = self.db.execute(
                "SELECT count(*) FROM segments WHERE lost_ms IS NOT NULL"
            ).fetchone()[0]
            blob_bytes = self.db.execute(
                "SELECT coalesce(sum(coalesce(s.size_bytes,"
                " json_extract(o.payload, '$.size_bytes'))), 0) FROM outbox o"
                " LEFT JOIN segments s ON o.kind = 'segment' AND s.segment_id = o.ref_id"
                " WHERE o.sent_ms IS NULL AND o.dropped_ms IS NULL"
                " AND o.kind IN ('segment', 'thumbnail', 'crop')"
            ).fetchone()[0]
            return {
                "pending": per_kind,
                "oldest_pending_age_ms": None if oldest is None else _now_ms() - oldest,
                # Bytes of video and images still to upload: what the link must carry.
                "pending_blob_bytes": blob_bytes,
                "sent": sent,
                # Segments whose file disappeared (docs/design/segments.md "Recovery").
                "lost": lost,
            }

        return await self._run(query)

    # --- docs/design/lpr.md: plate reads of the agent's own LPR, the local watchlist --------

    async def add_lpr_read(self, read: LprRead, alerts: list[WatchlistAlert], hold_ms: int) -> bool:
        """Store one passage's plate read (crop already on disk, fsynced) and its watchlist
        alerts' outbox rows, in one transaction. The read's own outbox row is written at once
        when a registered segment of its camera holds ``seen_ms``; otherwise the read is held
        until one is registered or ``hold_ms`` passes (``release_plate_reads``). Idempotent on
        ``read_id``; returns False if it was already stored."""

        def insert() -> bool:
            now = _now_ms()
            with self.db.atomic():
                row = self.db.execute(
                    "SELECT segment_id FROM segments WHERE camera_id = ? AND start_ms <= ?"
                    " AND start_ms > ? AND start_ms + duration_ms > ?"
                    " ORDER BY start_ms DESC LIMIT 1",
                    [str(read.camera_id), read.seen_ms, read.seen_ms - 120_000, read.seen_ms],
                ).fetchone()
                segment_id = row[0] if row else None
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO plate_reads (read_id, camera_id, plate, confidence,"
                    " seen_ms, segment_id, created_ms, first_ms, last_ms, box, crop_path,"
                    " crop_size_bytes, crop_sha256, held, hold_until_ms, context_path,"
                    " context_size_bytes, context_sha256)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [str(read.read_id), str(read.camera_id), read.plate, read.confidence,
                     read.seen_ms, segment_id, now, read.first_ms, read.last_ms,
                     json.dumps(list(read.box)), read.crop_path, read.crop_size_bytes,
                     read.crop_sha256, 0 if segment_id else 1, now + hold_ms,
                     read.context_path, read.context_size_bytes, read.context_sha256],
                )  # fmt: skip
                if not cur.rowcount:
                    return False
                if segment_id:
                    self._queue_plate_read(str(read.read_id), now)
                for alert in alerts:
                    self.db.execute(
                        "INSERT OR IGNORE INTO outbox (kind, priority, ref_id, payload, created_ms)"
                        " VALUES ('watchlist_alert', ?, ?, ?, ?)",
                        [PRIORITY["alert"], str(alert.alert_id), alert.model_dump_json(), now],
                    )
            return True

        added = await self._run(insert)
        self._outbox_changed.set()
        return added

    def _queue_plate_read(self, read_id: str, now: int) -> None:
        """Write a stored read's outbox row (its wire message), and its crop's when it has one,
        and mark it released. Writer thread, inside the caller's transaction."""
        if self.agent_id is None:
            raise RuntimeError("a store without agent_id cannot queue plate reads")
        r = self.db.execute(
            "SELECT camera_id, plate, confidence, seen_ms, segment_id, crop_path,"
            " crop_size_bytes, crop_sha256, context_path, context_size_bytes, context_sha256"
            " FROM plate_reads WHERE read_id = ?",
            [read_id],
        ).fetchone()
        message = PlateRead(
            read_id=UUID(read_id),
            agent_id=self.agent_id,
            camera_id=UUID(r[0]),
            plate=r[1],
            confidence=r[2],
            seen_ms=r[3],
            segment_id=UUID(r[4]) if r[4] else None,
        )
        self.db.execute(
            "INSERT OR IGNORE INTO outbox (kind, priority, ref_id, payload, created_ms)"
            " VALUES ('plate_read', ?, ?, ?, ?)",
            [PRIORITY["plate_read"], read_id, message.model_dump_json(), now],
        )
        if r[5] and r[6] and r[7]:
            # The evidence crop goes by claim-check in the blob lane (PlateCrop), keyed by the
            # read: central joins the two whichever arrives first.
            crop: dict[str, Any] = {"read_id": read_id, "camera_id": r[0], "path": r[5],
                                    "size_bytes": r[6], "sha256": r[7]}  # fmt: skip
            if r[8] and r[9] and r[10]:  # its context frame goes with it
                crop["context"] = {"path": r[8], "size_bytes": r[9], "sha256": r[10]}
            self.db.execute(
                "INSERT OR IGNORE INTO outbox (kind, priority, ref_id, payload, created_ms)"
                " VALUES ('crop', ?, ?, ?, ?)",
                [PRIORITY["crop"], read_id, json.dumps(crop), now],
            )
        self.db.execute("UPDATE plate_reads SET held = 0 WHERE read_id = ?", [read_id])

    async def release_plate_reads(self, now_ms: int | None = None) -> int:
        """Write the outbox rows of held reads that are linked to their segment by now, or
        whose hold time has passed (sent without a segment). Returns how many. Commits."""

        def release() -> int:
            now = _now_ms() if now_ms is None else now_ms
            with self.db.atomic():
                ids = [
                    r[0]
                    for r in self.db.execute(
                        "SELECT read_id FROM plate_reads WHERE held = 1"
                        " AND (segment_id IS NOT NULL OR hold_until_ms <= ?)",
                        [now],
                    ).fetchall()
                ]
                for read_id in ids:
                    self._queue_plate_read(read_id, _now_ms())
            return len(ids)

        released = await self._run(release)
        if released:
            self._outbox_changed.set()
        return released

    async def replace_watchlist(self, entries: list[WatchEntry]) -> int:
        """The local watchlist becomes ``entries`` (the loader: central's lists as they are
        now), in one transaction. Returns how many plates it holds. Commits."""

        def replace() -> int:
            now = _now_ms()
            with self.db.atomic():
                self.db.execute("DELETE FROM watchlist")
                self.db.conn.executemany(
                    "INSERT OR REPLACE INTO watchlist (plate, watchlist_id, reason, loaded_ms)"
                    " VALUES (?, ?, ?, ?)",
                    [(e.plate, str(e.watchlist_id) if e.watchlist_id else None, e.reason, now)
                     for e in entries],
                )  # fmt: skip
                n: int = self.db.execute("SELECT count(*) FROM watchlist").fetchone()[0]
            return n

        return await self._run(replace)

    async def watchlist(self) -> list[WatchEntry]:
        """The local watchlist's plates."""

        def query() -> list[WatchEntry]:
            rows = self.db.execute(
                "SELECT plate, watchlist_id, reason FROM watchlist ORDER BY plate"
            ).fetchall()
            return [WatchEntry(r[0], UUID(r[1]) if r[1] else None, r[2]) for r in rows]

        return await self._run(query)

    async def watchlist_version(self) -> tuple[int, int]:
        """(when the local watchlist was last replaced, how many plates): changes with every
        load, so the matcher notices a new list."""

        def query() -> tuple[int, int]:
            row = self.db.execute("SELECT max(loaded_ms), count(*) FROM watchlist").fetchone()
            return int(row[0] or 0), int(row[1])

        return await self._run(query)
