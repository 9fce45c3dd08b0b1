"""The agent's local store: SQLite (WAL) through sqlite-utils, one writer thread, with migrations.

Every write that must reach central commits together with its outbox row (docs/design/overview.md,
"Outbox"; segment steps, invariants and recovery: docs/design/segments.md). All methods of
``Store`` run on one dedicated thread, so there is exactly one writer and the event loop never
blocks on SQLite.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import sqlite_utils

from shared.messages import PlateRead

T = TypeVar("T")

# Lower sends first: alerts and plate reads before status, before images, before video.
PRIORITY = {"alert": 0, "plate_read": 10, "camera_status": 20, "thumbnail": 30, "segment": 40}

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


@dataclass(frozen=True)
class SegmentFile:
    """A registered segment's file as the store expects to find it (recovery's I1 check)."""

    rowid: int
    segment_id: str
    path: Path
    size_bytes: int


@dataclass(frozen=True)
class OutboxRow:
    id: int
    kind: str
    ref_id: str
    payload: dict[str, Any]
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
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
    return db


class Store:
    """Async facade over the SQLite store; every call runs on the single writer thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite_utils.Database | None = None

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
        return await self._run(lambda: self._add_segment(seg))

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

    async def segment(self, segment_id: str) -> Segment | None:
        return await self._run(lambda: self._segment_where("segment_id = ?", [segment_id]))

    def _segment_where(self, where: str, params: list[Any]) -> Segment | None:
        # ``where`` is one of this class's literals; values are always bound parameters.
        sql = (
            "SELECT segment_id, camera_id, run_id, seq, path, start_ms, duration_ms, "  # noqa: S608
            "size_bytes, sha256, codec, time_source FROM segments WHERE " + where
        )
        row = self.db.execute(sql, params).fetchone()
        if row is None:
            return None
        return Segment(
            UUID(row[0]), UUID(row[1]), UUID(row[2]), row[3], Path(row[4]),
            row[5], row[6], row[7], row[8], row[9], row[10],
        )  # fmt: skip

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
                "WHERE lost_ms IS NULL AND rowid > ? ORDER BY rowid LIMIT ?",
                [after_rowid, limit],
            ).fetchall()
            return [SegmentFile(r[0], r[1], Path(r[2]), r[3]) for r in rows]

        return await self._run(query)

    async def mark_lost(self, segment_id: str, reason: str, at_ms: int) -> bool:
        """Record that a segment's file is gone, and stop its upload. One transaction.

        The row stays (its path stays reserved, so a file reappearing there is never registered
        again as another segment); its unsent outbox row is dropped so the relay never retries
        a file that cannot come back. Returns True if that outbox row had not been sent, i.e.
        central never received the segment. Idempotent.
        """

        def update() -> bool:
            with self.db.atomic():
                self.db.execute(
                    "UPDATE segments SET lost_ms = ?, lost_reason = ? "
                    "WHERE segment_id = ? AND lost_ms IS NULL",
                    [at_ms, reason[:500], segment_id],
                )
                cur = self.db.execute(
                    "UPDATE outbox SET dropped_ms = ?, last_error = ? "
                    "WHERE kind = 'segment' AND ref_id = ? "
                    "AND sent_ms IS NULL AND dropped_ms IS NULL",
                    [at_ms, f"segment lost: {reason}"[:500], segment_id],
                )
                return bool(cur.rowcount)

        return await self._run(update)

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
        """Segment rows whose file the spool must still hold (not marked lost)."""

        def query() -> int:
            n: int = self.db.execute(
                "SELECT count(*) FROM segments WHERE lost_ms IS NULL"
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

        return await self._run(insert)

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

        return await self._run(insert)

    async def mark_failed(self, outbox_id: int, error: str) -> None:
        """Count a failed attempt and keep its reason for `status`. Commits."""

        def update() -> None:
            with self.db.atomic():
                self.db.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                    [error[:500], outbox_id],
                )

        await self._run(update)

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
            return {
                "pending": per_kind,
                "oldest_pending_age_ms": None if oldest is None else _now_ms() - oldest,
                "sent": sent,
                # Segments whose file disappeared (docs/design/segments.md "Recovery").
                "lost": lost,
            }

        return await self._run(query)
