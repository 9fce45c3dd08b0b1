"""The spool's disk budget: eviction of video (docs/design/segments.md step 7).

The decision is pure and has no I/O: ``bytes_to_free`` says how much the budget wants back,
``plan_eviction`` puts the segments in eviction order (synced ones oldest first, then unsynced
ones oldest first) and takes the fewest that cover it, ``coalesce_losses`` groups the unsynced
ones into loss events. ``Store.evict`` applies them in one transaction (the recorded step);
``Evictor`` measures usage, calls it, then unlinks the files and records that they are gone.

Plate reads, their crops and every outbox row other than an evicted segment's own are never
touched; crops count against ``max_bytes`` (video makes room for them).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.media import fsync_dir
from shared.messages import LossEvent

if TYPE_CHECKING:
    from agent.config import StorageConfig
    from agent.store import Store

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
# The measured bitrate: bytes recorded over this window (or since the first segment in it).
BITRATE_WINDOW_MS = 6 * 3_600_000
# Shorter than this, a measured bitrate says too little to quote a retention.
MIN_BITRATE_SPAN_MS = 60_000
# Segments per eviction transaction; a check runs several when far over budget.
EVICT_BATCH = 1000
MAX_BATCHES_PER_CHECK = 100
PURGE_EVERY_MS = 3_600_000  # the history purge runs at most hourly
# Kept allocated beside the store so that an eviction can always commit on a full disk (SQLite
# must write to delete): released for the eviction's transaction, made again afterwards.
RESERVE_BYTES = 8 * 1024**2


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


# --- the decision (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    max_bytes: int | None = None  # bytes of live segments
    min_free_bytes: int | None = None  # free bytes on the spool's filesystem
    check_seconds: float = 10.0
    history_days: int = 30  # finished segments' rows are forgotten after this

    @classmethod
    def of(cls, storage: StorageConfig) -> Budget:
        return cls(
            storage.max_bytes, storage.min_free_bytes, storage.check_seconds, storage.history_days
        )


@dataclass(frozen=True)
class Usage:
    used_bytes: int  # registered sizes of the segments the spool holds (not lost, not evicted)
    free_bytes: int  # free on the spool's filesystem for unprivileged writers (statvfs)
    # Plate reads' evidence crops the agent holds: inside ``max_bytes`` too, never evicted
    # (video makes room for them; they go with their read's history, docs/design/lpr.md).
    image_bytes: int = 0


def bytes_to_free(usage: Usage, budget: Budget) -> int:
    """How many bytes of video must go for the spool to be within its budget (0: none).

    Both limits apply; the stricter one wins; crops count in ``max_bytes``. Never more than
    the spool holds: what other files take on the filesystem cannot be won back by evicting
    video.
    """
    need = 0
    if budget.max_bytes is not None:
        need = max(need, usage.used_bytes + usage.image_bytes - budget.max_bytes)
    if budget.min_free_bytes is not None:
        need = max(need, budget.min_free_bytes - usage.free_bytes)
    return max(0, min(need, usage.used_bytes))


@dataclass(frozen=True)
class Candidate:
    """A segment the spool holds, as the eviction order sees it."""

    segment_id: str
    camera_id: str
    run_id: str
    seq: int
    path: str
    start_ms: int
    duration_ms: int
    size_bytes: int
    synced: bool  # its outbox row was acknowledged by the broker

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.duration_ms


def eviction_order(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Synced segments oldest first, then unsynced ones oldest first."""
    return sorted(candidates, key=lambda c: (not c.synced, c.start_ms, c.run_id, c.seq))


def plan_eviction(
    need_bytes: int, candidates: Iterable[Candidate], max_segments: int = EVICT_BATCH
) -> list[Candidate]:
    """The shortest prefix of the eviction order that frees ``need_bytes`` (all of it if it
    cannot), at most ``max_segments`` long. An unsynced segment is chosen only once every
    synced candidate is."""
    chosen: list[Candidate] = []
    freed = 0
    for c in eviction_order(candidates):
        if freed >= need_bytes or len(chosen) >= max_segments:
            break
        chosen.append(c)
        freed += c.size_bytes
    return chosen


def coalesce_losses(evicted: Iterable[Candidate]) -> list[list[Candidate]]:
    """The unsynced segments among ``evicted``, grouped into losses: one group per run of
    consecutive files (same ffmpeg run, seq n then n+1) of one camera. A gap (another run, a
    quarantined file, a segment not evicted) starts a new group, so a loss's time range never
    covers video central has or that was never recorded."""
    by_camera: dict[str, list[Candidate]] = defaultdict(list)
    for c in evicted:
        if not c.synced:
            by_camera[c.camera_id].append(c)
    groups: list[list[Candidate]] = []
    for segs in by_camera.values():
        segs.sort(key=lambda c: (c.start_ms, c.run_id, c.seq))
        for c in segs:
            last = groups[-1][-1] if groups and groups[-1][-1].camera_id == c.camera_id else None
            if last is not None and last.run_id == c.run_id and c.seq == last.seq + 1:
                groups[-1].append(c)
            else:
                groups.append([c])
    groups.sort(key=lambda g: (g[0].start_ms, g[0].camera_id))
    return groups


def bytes_per_day(recorded_bytes: int, span_ms: int) -> float | None:
    """The measured recording rate, or None when the span is too short to say."""
    if span_ms < MIN_BITRATE_SPAN_MS or recorded_bytes <= 0:
        return None
    return recorded_bytes * DAY_MS / span_ms


def capacity_bytes(usage: Usage, budget: Budget) -> int:
    """How many bytes of video the budget lets the spool hold, as things stand."""
    capacity = usage.used_bytes + usage.free_bytes
    if budget.max_bytes is not None:
        capacity = min(capacity, budget.max_bytes - usage.image_bytes)
    if budget.min_free_bytes is not None:
        capacity = min(capacity, usage.used_bytes + usage.free_bytes - budget.min_free_bytes)
    return max(0, capacity)


def retention_days(capacity: int, rate_bytes_per_day: float | None) -> float | None:
    """Days of video the capacity holds at the measured rate."""
    if rate_bytes_per_day is None or rate_bytes_per_day <= 0:
        return None
    return capacity / rate_bytes_per_day


@dataclass(frozen=True)
class Eviction:
    """What one eviction transaction decided (``Store.evict``)."""

    segments: tuple[Candidate, ...]
    losses: tuple[LossEvent, ...]
    finished_runs: frozenset[str]  # runs of these segments that ffmpeg no longer writes

    @property
    def freed_bytes(self) -> int:
        return sum(c.size_bytes for c in self.segments)

    @property
    def unsynced(self) -> int:
        return sum(1 for c in self.segments if not c.synced)


# --- the I/O -------------------------------------------------------------------------------


def free_bytes(path: Path) -> int:
    """Free bytes on ``path``'s filesystem that an unprivileged writer may use."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def unlink_files(paths: Iterable[Path]) -> None:
    """Remove files (already gone is fine) and fsync each directory once. Blocks: use a
    thread. Errors other than a missing file raise."""
    dirs = set()
    for path in paths:
        path.unlink(missing_ok=True)
        dirs.add(path.parent)
    for d in dirs:
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(d)


def remove_empty_dir(path: Path) -> bool:
    """rmdir ``path`` if it is empty and fsync its parent. Blocks: use a thread."""
    try:
        path.rmdir()
    except OSError:  # not empty, or gone
        return False
    fsync_dir(path.parent)
    return True


class Evictor:
    """Keeps the spool within its budget: every ``check_seconds``, reads the store's live bytes
    and the filesystem's free space, and evicts what the budget wants back.

    ``budget`` is called at each check, so a reloaded budget applies at the next one.

    A full disk (something else filled the filesystem) is the case the budget exists for, and
    the one where SQLite cannot commit the eviction that would make room: ``reserve`` (a file
    of ``RESERVE_BYTES`` kept allocated) is released when an eviction fails for want of space,
    the eviction retried, and the reserve made again once there is room (docs/design/segments.md
    step 7, "A full disk").
    """

    def __init__(
        self,
        store: Store,
        spool: Path,
        budget: Callable[[], Budget],
        clock_ms: Callable[[], int] = _wall_ms,
        reserve: Path | None = None,
    ) -> None:
        self.store = store
        self.spool = spool
        self.budget = budget
        self.clock_ms = clock_ms
        self.reserve = reserve
        self.reserve_released = 0  # times the reserve was given up to let an eviction commit
        self.last_check: dict[str, Any] | None = None
        self.last_error: str | None = None
        self._rate: tuple[int, float | None] | None = None  # (measured at ms, bytes per day)
        self._last_purge_ms: int | None = None
        self.history_forgotten = 0

    async def run(self) -> None:
        """Check until cancelled. An OS or SQLite error (statvfs, unlink, a full disk) is
        logged and retried: the budget is what makes room, it must not stop for want of it."""
        while True:
            try:
                await self.check()
                self.last_error = None
            except (OSError, sqlite3.Error) as exc:
                if str(exc) != self.last_error:
                    log.error("disk budget check failed: %s", exc)
                self.last_error = str(exc)
            await asyncio.sleep(self.budget().check_seconds)

    def _make_reserve(self) -> bool:
        """Allocate the reserve if it is missing and there is room for it beside the budget's
        free space. Blocks."""
        if self.reserve is None or self.reserve.exists():
            return False
        st = os.statvfs(self.reserve.parent)
        wanted = RESERVE_BYTES + (self.budget().min_free_bytes or 0)
        if st.f_bavail * st.f_frsize < wanted:
            return False
        tmp = self.reserve.with_name(self.reserve.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            return False
        os.close(fd)
        os.replace(tmp, self.reserve)
        return True

    def _release_reserve(self) -> bool:
        if self.reserve is None or not self.reserve.exists():
            return False
        self.reserve.unlink()
        fsync_dir(self.reserve.parent)
        self.reserve_released += 1
        log.error("disk full: released the %d MiB reserve so that eviction can commit",
                  RESERVE_BYTES // 1024**2)  # fmt: skip
        return True

    async def _evict(self, need: int) -> Eviction:
        """``Store.evict``, retried once with the reserve released if the disk is full."""
        try:
            return await self.store.evict(need, self.clock_ms(), EVICT_BATCH)
        except (sqlite3.OperationalError, OSError) as exc:
            full = isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)
            if not (full or getattr(exc, "errno", None) == errno.ENOSPC):
                raise
            if not await asyncio.to_thread(self._release_reserve):
                raise
            return await self.store.evict(need, self.clock_ms(), EVICT_BATCH)

    async def usage(self) -> Usage:
        live = await self.store.spool_usage()
        free = await asyncio.to_thread(free_bytes, self.spool)
        return Usage(live.live_bytes, free, live.crop_bytes)

    async def check(self) -> list[Eviction]:
        """One budget check: finish unlinks a crash left, then evict until within budget."""
        await self.finish_unlinks()
        budget = self.budget()
        done: list[Eviction] = []
        usage = await self.usage()
        for _ in range(MAX_BATCHES_PER_CHECK):
            need = bytes_to_free(usage, budget)
            if need <= 0:
                break
            eviction = await self._evict(need)
            if not eviction.segments:
                log.error("spool over its budget by %d bytes, and nothing left to evict", need)
                break
            await self._remove(eviction)
            done.append(eviction)
            self._log(eviction, need)
            usage = await self.usage()
        await self._record(usage, budget)
        await self.purge_history(budget)
        await asyncio.to_thread(self._make_reserve)
        return done

    async def purge_history(self, budget: Budget) -> int:
        """docs/design/segments.md "History": at most hourly, forget the rows of segments
        whose video went (evicted or lost) more than ``history_days`` ago, in batches."""
        now = self.clock_ms()
        if self._last_purge_ms is not None and now - self._last_purge_ms < PURGE_EVERY_MS:
            return 0
        self._last_purge_ms = now
        before = now - budget.history_days * 86_400_000
        forgotten = reads = rows = 0
        while n := await self.store.purge_history(before, EVICT_BATCH):
            forgotten += n
            await asyncio.sleep(0)  # other store work goes between batches
        # Plate reads central has had: crop files first, rows second (a crash between them
        # leaves rows whose files are gone, which the next pass finishes).
        while sent := await self.store.sent_plate_reads(before, EVICT_BATCH):
            await asyncio.to_thread(unlink_files, [Path(f) for _, files in sent for f in files])
            reads += await self.store.purge_plate_reads([r for r, _ in sent])
            await asyncio.sleep(0)
        # Thumbnails, loss events and alerts central has had (or superseded thumbnails).
        while n := await self.store.purge_sent_rows(before, EVICT_BATCH):
            rows += n
            await asyncio.sleep(0)
        if forgotten or reads or rows:
            self.history_forgotten += forgotten + reads + rows
            log.info("store: forgot %d finished segment row(s), %d sent plate read(s) and %d "
                     "other sent row(s) older than %d days",
                     forgotten, reads, rows, budget.history_days)  # fmt: skip
        return forgotten + reads + rows

    async def finish_unlinks(self) -> int:
        """Unlink the files of evicted rows not yet recorded as unlinked (a crash or an error
        between step 7's commit and its unlink). Returns how many rows it finished."""
        finished = 0
        while pending := await self.store.unlink_pending():
            await asyncio.to_thread(unlink_files, [p for _, p in pending])
            await self.store.mark_unlinked([i for i, _ in pending], self.clock_ms())
            finished += len(pending)
        return finished

    async def _remove(self, eviction: Eviction) -> None:
        """Step 7 after the commit: unlink, fsync the directories, remove finished runs' empty
        directories, then record the unlink."""
        paths = [Path(c.path) for c in eviction.segments]
        await asyncio.to_thread(unlink_files, paths)
        run_dirs = {
            Path(c.path).parent for c in eviction.segments if c.run_id in eviction.finished_runs
        }
        for rd in sorted(run_dirs):
            await asyncio.to_thread(remove_empty_dir, rd)
        await self.store.mark_unlinked([c.segment_id for c in eviction.segments], self.clock_ms())

    def _log(self, eviction: Eviction, need: int) -> None:
        log.info(
            "disk budget: evicted %d segment(s), %d bytes (%d wanted); %d never synced",
            len(eviction.segments),
            eviction.freed_bytes,
            need,
            eviction.unsynced,
        )
        for loss in eviction.losses:
            log.error(
                "disk budget: camera %s lost %d unsynced segment(s) (%d bytes) from %d to %d; "
                "central will be told",
                loss.camera_id,
                loss.segments,
                loss.size_bytes,
                loss.start_ms,
                loss.end_ms,
            )

    async def _rate_per_day(self, now: int) -> float | None:
        """Bytes recorded per day over the last hours, refreshed at most once a minute."""
        if self._rate is None or now - self._rate[0] >= 60_000:
            _, recorded, first = await self.store.recorded_since(now - BITRATE_WINDOW_MS)
            span = 0 if first is None else now - first
            self._rate = (now, bytes_per_day(recorded, span))
        return self._rate[1]

    async def _record(self, usage: Usage, budget: Budget) -> None:
        """The figures ``gtvision-agent status`` shows."""
        now = self.clock_ms()
        live = await self.store.spool_usage()
        rate = await self._rate_per_day(now)
        capacity = capacity_bytes(usage, budget)
        oldest = await self.store.oldest_live_ms()
        self.last_check = {
            "checked_ms": now,
            "max_bytes": budget.max_bytes,
            "min_free_bytes": budget.min_free_bytes,
            "reserve_released": self.reserve_released,
            "used_bytes": usage.used_bytes,
            "free_bytes": usage.free_bytes,
            "crop_bytes": usage.image_bytes,
            "segments": live.live_segments,
            "capacity_bytes": capacity,
            "bytes_per_day": None if rate is None else round(rate),
            "retention_days": retention_days(capacity, rate),
            "oldest_segment_ms": oldest,
            "evicted_segments": live.evicted_segments,
            "evicted_bytes": live.evicted_bytes,
            "evicted_unsynced": live.evicted_unsynced,
        }
