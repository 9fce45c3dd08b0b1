"""The agent's local store: SQLite (WAL) through sqlite-utils, one writer thread, with migrations.

Every write that must reach central commits together with its outbox row (docs/design/overview.md,
"Outbox"). All methods of ``Store`` run on one dedicated thread, so there is exactly one writer
and the event loop never blocks on SQLite.
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
]


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
        # docs/design/overview.md "Outbox", step 4: segment row and outbox row commit together.
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
                "WHERE sent_ms IS NULL ORDER BY priority, id LIMIT ?",
                [limit],
            ).fetchall()
            return [OutboxRow(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

        return await self._run(query)

    async def segment(self, segment_id: str) -> Segment | None:
        def query() -> Segment | None:
            row = self.db.execute(
                "SELECT segment_id, camera_id, run_id, seq, path, start_ms, duration_ms, "
                "size_bytes, sha256, codec FROM segments WHERE segment_id = ?",
                [segment_id],
            ).fetchone()
            if row is None:
                return None
            return Segment(
                UUID(row[0]), UUID(row[1]), UUID(row[2]), row[3], Path(row[4]),
                row[5], row[6], row[7], row[8], row[9],
            )  # fmt: skip

        return await self._run(query)

    async def mark_sent(self, outbox_id: int) -> None:
        """Record that the broker acknowledged the row (step 6). Commits."""

        def update() -> None:
            with self.db.atomic():
                self.db.execute(
                    "UPDATE outbox SET sent_ms = ?, last_error = NULL WHERE id = ?",
                    [_now_ms(), outbox_id],
                )

        await self._run(update)

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
                    "SELECT kind, count(*) FROM outbox WHERE sent_ms IS NULL GROUP BY kind"
                ).fetchall()
            )
            oldest = self.db.execute(
                "SELECT min(created_ms) FROM outbox WHERE sent_ms IS NULL"
            ).fetchone()[0]
            sent = self.db.execute(
                "SELECT count(*) FROM outbox WHERE sent_ms IS NOT NULL"
            ).fetchone()[0]
            return {
                "pending": per_kind,
                "oldest_pending_age_ms": None if oldest is None else _now_ms() - oldest,
                "sent": sent,
            }

        return await self._run(query)
