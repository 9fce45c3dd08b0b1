"""The spool on disk and its recovery after a crash (docs/design/segments.md, "Recovery").

Layout: ``<spool>/<camera_key>/<run_id>/<seq:06d>.mp4``, unplayable files under
``<spool>/quarantine/<camera_key>/<run_id>-<name>``, and the marker ``<spool>/.gtvision-spool``
holding the spool id that the store also records.

``reconcile`` runs once at agent start, before any recorder, and restores the invariants:

- I1: every segments row has its file (or a recorded loss, or a recorded eviction);
- I2: every complete file in the spool has a row (or is quarantined);
- I3: a file is registered as at most one segment_id.

``recover_run`` is the same repair for one run; the recorder calls it when its ffmpeg exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from agent.eviction import unlink_files
from agent.media import InvalidSegment, ProbeResult, fsync_dir, hash_and_sync, probe
from agent.store import Segment, SegmentFile, Store
from shared.messages import LossReason

log = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"
# Starts with a dot: camera keys cannot, so the marker never collides with a camera directory.
MARKER_FILE = ".gtvision-spool"
META_SPOOL_ID = "spool_id"
# ffmpeg's ``%06d``: six digits, more after a million segments in one run.
SEGMENT_NAME = re.compile(r"^(\d{6,})\.mp4$")
PAGE = 1000


class SpoolMismatch(RuntimeError):
    """The spool on disk is not the one the store describes (unmounted disk, wrong path,
    a store from elsewhere). Nothing was changed; the agent must not start recording."""


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def run_dir(spool: Path, camera_key: str, run_id: UUID) -> Path:
    return spool / camera_key / str(run_id)


def segment_seq(path: Path) -> int | None:
    """The file number ffmpeg gave a segment (``000042.mp4`` -> 42); None for other names."""
    m = SEGMENT_NAME.match(path.name)
    return int(m.group(1)) if m else None


def create_run_dir(spool: Path, camera_key: str, run_id: UUID) -> Path:
    """docs/design/segments.md step 0: a durable, empty run directory. Blocks: use a thread."""
    path = run_dir(spool, camera_key, run_id)
    path.mkdir(parents=True, exist_ok=True)
    fsync_dir(path.parent)
    fsync_dir(spool)
    return path


def quarantine(spool: Path, camera_key: str, run_id: UUID, path: Path) -> Path:
    """Move an unplayable file out of the run (step 2, recovery R3). Blocks: use a thread.

    A quarantined file is never registered: recovery does not look inside ``quarantine/``.
    """
    dest_dir = spool / QUARANTINE_DIR / camera_key
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{run_id}-{path.name}"
    path.replace(dest)
    fsync_dir(dest_dir)
    fsync_dir(path.parent)
    return dest


@dataclass
class RecoveryReport:
    """What one recovery changed. A second recovery of the same spool reports nothing."""

    registered: list[Segment] = field(default_factory=list)
    quarantined: list[Path] = field(default_factory=list)  # where each file was (in its run)
    missing: list[Path] = field(default_factory=list)  # rows marked lost
    missing_unsent: int = 0  # of those, never acknowledged by central
    removed_dirs: list[Path] = field(default_factory=list)
    forgotten_runs: int = 0
    # Evicted rows whose unlink was not recorded (a crash inside step 7): finished, not lost.
    evictions_finished: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "registered": len(self.registered),
            "quarantined": len(self.quarantined),
            "missing": len(self.missing),
            "missing_unsent": self.missing_unsent,
            "removed_dirs": len(self.removed_dirs),
            "forgotten_runs": self.forgotten_runs,
            "evictions_finished": self.evictions_finished,
        }

    @property
    def changed(self) -> bool:
        return any(self.counts().values())

    def merge(self, other: RecoveryReport) -> None:
        self.registered += other.registered
        self.quarantined += other.quarantined
        self.missing += other.missing
        self.missing_unsent += other.missing_unsent
        self.removed_dirs += other.removed_dirs
        self.forgotten_runs += other.forgotten_runs
        self.evictions_finished += other.evictions_finished


async def reconcile(
    store: Store,
    spool: Path,
    clock_ms: Callable[[], int] = _wall_ms,
    *,
    adopt_spool: bool = False,
) -> RecoveryReport:
    """Start-up recovery (docs/design/segments.md R1-R4). Run before any recorder starts.

    Raises SpoolMismatch, changing nothing, when the spool is not the store's (R1) unless
    ``adopt_spool``: then rows whose files are absent are recorded as lost.
    """
    await asyncio.to_thread(spool.mkdir, parents=True, exist_ok=True)
    await _check_marker(store, spool, adopt_spool)  # R1
    report = RecoveryReport()
    await _finish_evictions(store, clock_ms, report)  # R2, evicted rows
    await _rows_without_files(store, spool, clock_ms, report)  # R2
    for camera_dir in await asyncio.to_thread(_camera_dirs, spool):  # R3, R4
        for rd in await asyncio.to_thread(_run_dirs, camera_dir):
            try:
                run_id = UUID(rd.name)
            except ValueError:
                log.warning("spool: %s is not a run directory; left alone", rd)
                continue
            report.merge(await recover_run(store, spool, camera_dir.name, run_id))
        if await asyncio.to_thread(_rmdir_if_empty, camera_dir):
            report.removed_dirs.append(camera_dir)
    for run_id, camera_key in await store.runs():  # R4: runs that left nothing behind
        if not run_dir(spool, camera_key, run_id).exists() and await store.forget_run(run_id):
            report.forgotten_runs += 1
    log.log(
        logging.WARNING if report.quarantined or report.missing else logging.INFO,
        "spool %s reconciled: %s",
        spool,
        " ".join(f"{k}={v}" for k, v in report.counts().items()),
    )
    return report


async def recover_run(store: Store, spool: Path, camera_key: str, run_id: UUID) -> RecoveryReport:
    """R3 and R4 for one run directory: register valid files that have no row, quarantine the
    rest, remove the directory (and forget the run) once empty. Nothing may be writing into it.
    """
    report = RecoveryReport()
    rd = run_dir(spool, camera_key, run_id)
    files = await asyncio.to_thread(_segment_files, rd)
    if files:
        known = await store.run_paths(run_id)
        orphans = [(seq, path) for seq, path in files if str(path) not in known]
        camera_id = await store.run_camera(run_id) if orphans else None
        for seq, path in orphans:
            seg = await _recover_file(store, spool, camera_key, run_id, camera_id, seq, path)
            if seg is None:
                report.quarantined.append(path)
            elif await store.add_segment(seg):
                report.registered.append(seg)
    if await asyncio.to_thread(_rmdir_if_empty, rd):
        report.removed_dirs.append(rd)
        if await store.forget_run(run_id):
            report.forgotten_runs += 1
    return report


async def _recover_file(
    store: Store,
    spool: Path,
    camera_key: str,
    run_id: UUID,
    camera_id: UUID | None,
    seq: int,
    path: Path,
) -> Segment | None:
    """A segment for a file that has no row, or None after quarantining it."""
    try:
        if camera_id is None:
            raise InvalidSegment("its run has no runs row and no registered segment")
        info = await probe(path)  # the recorder's step 2, unchanged
    except InvalidSegment as exc:
        await asyncio.to_thread(quarantine, spool, camera_key, run_id, path)
        log.warning("spool: %s quarantined (no row, not a complete segment: %s)", path, exc)
        return None
    start_ms, how = await _recovered_start(store, run_id, seq, path, info)
    size, sha = await asyncio.to_thread(hash_and_sync, path)  # step 3
    log.warning("spool: registering %s found without a row; start from %s", path, how)
    # A new id: this file never had a committed row, so no id of it can have reached central
    # (docs/design/segments.md "Why a new segment_id is safe"). add_segment's path check makes
    # a second registration of the same file a no-op.
    return Segment(
        segment_id=uuid.uuid4(),
        camera_id=camera_id,
        run_id=run_id,
        seq=seq,
        path=path,
        start_ms=start_ms,
        duration_ms=info.duration_ms,
        size_bytes=size,
        sha256=sha,
        codec=info.codec,
        time_source="recovered",
    )


async def _recovered_start(
    store: Store, run_id: UUID, seq: int, path: Path, info: ProbeResult
) -> tuple[int, str]:
    """The honest start of a recovered file: right after the run's previous segment when that
    one is registered (segments of a run abut), else its mtime (when ffmpeg closed it) minus its
    media duration. Never the file name: it carries no time."""
    prev = await store.segment_at(run_id, seq - 1) if seq > 0 else None
    if prev is not None:
        return prev.start_ms + prev.duration_ms, f"the end of segment {prev.segment_id}"
    mtime_ms = (await asyncio.to_thread(path.stat)).st_mtime_ns // 1_000_000
    return mtime_ms - info.duration_ms, "its mtime minus its duration"


async def _finish_evictions(
    store: Store, clock_ms: Callable[[], int], report: RecoveryReport
) -> None:
    """An evicted row is not a loss: step 7 recorded it before the unlink. If the agent died
    between that commit and the unlink (or its record), the file may still be there: unlink
    it now. Evicted rows whose unlink is recorded are never looked at again."""
    while pending := await store.unlink_pending(PAGE):
        await asyncio.to_thread(unlink_files, [p for _, p in pending])
        await store.mark_unlinked([i for i, _ in pending], clock_ms())
        report.evictions_finished += len(pending)
        log.warning("spool: finished %d eviction(s) interrupted before the unlink", len(pending))


async def _rows_without_files(
    store: Store, spool: Path, clock_ms: Callable[[], int], report: RecoveryReport
) -> None:
    """R2: a row whose file is gone (or changed size) is recorded as lost, and its upload is
    dropped: the relay must never retry a file that cannot come back. If central never got
    it, ``mark_lost`` queues a loss event (``file_missing`` or ``corrupt``)."""
    after = 0
    while page := await store.segment_files(after, PAGE):
        after = page[-1].rowid
        for f, problem in await asyncio.to_thread(_problems, page):
            if problem != "file missing" and _in_layout(spool, f.path):
                run_id = UUID(f.path.parent.name)
                camera_key = f.path.parent.parent.name
                await asyncio.to_thread(quarantine, spool, camera_key, run_id, f.path)
            kind: LossReason = "file_missing" if problem == "file missing" else "corrupt"
            unsent = await store.mark_lost(f.segment_id, problem, clock_ms(), kind)
            report.missing.append(f.path)
            report.missing_unsent += unsent
            log.error(
                "spool: segment %s lost (%s: %s)%s",
                f.segment_id,
                problem,
                f.path,
                "; central never received it" if unsent else "",
            )


def _problems(page: list[SegmentFile]) -> list[tuple[SegmentFile, str]]:
    """The page's rows whose file no longer backs them (one thread hop per page, not per row)."""
    return [(f, problem) for f in page if (problem := _problem(f)) is not None]


def _problem(f: SegmentFile) -> str | None:
    """Why a registered file no longer backs its row; None when it does. Other OS errors
    (permissions, I/O) raise: they are not evidence that the file is gone."""
    try:
        st = f.path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return "file missing"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size != f.size_bytes:
        return f"size {st.st_size} differs from the registered {f.size_bytes}"
    return None


def _in_layout(spool: Path, path: Path) -> bool:
    try:
        UUID(path.parent.name)
    except ValueError:
        return False
    return path.parent.parent.parent == spool and path.is_file()


async def _check_marker(store: Store, spool: Path, adopt: bool) -> None:
    """R1: the store and the spool name the same spool id, or nothing is at stake."""
    marker = spool / MARKER_FILE
    on_disk = await asyncio.to_thread(_read_marker, marker)
    expected = await store.get_meta(META_SPOOL_ID)
    if on_disk == expected and expected is not None:
        return
    mismatch = (expected is not None or on_disk is not None) and on_disk != expected
    if mismatch and not adopt:
        at_stake = await store.live_segment_count() > 0
        if at_stake or await asyncio.to_thread(_has_segments, spool):
            raise SpoolMismatch(
                f"spool {spool} has id {on_disk or '(no marker)'} but the store expects "
                f"{expected or '(none: this store never used a spool)'}. Is the right disk "
                "mounted? Nothing was changed. To accept this spool and record every segment "
                f"missing from it as lost, delete the store's `{META_SPOOL_ID}` meta row or "
                "reconcile with adopt_spool=True."
            )
    spool_id = expected or on_disk or str(uuid.uuid4())
    if mismatch:
        log.warning("spool %s: adopting it as spool %s", spool, spool_id)
    # The store first: a crash before the marker is written leaves a store that expects an id
    # the spool lacks, with nothing at stake yet, which the next start repairs the same way.
    await store.set_meta(META_SPOOL_ID, spool_id)
    if on_disk != spool_id:
        await asyncio.to_thread(_write_marker, marker, spool_id)


def _read_marker(marker: Path) -> str | None:
    try:
        return marker.read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_marker(marker: Path, spool_id: str) -> None:
    tmp = marker.with_name(marker.name + ".tmp")
    with tmp.open("w") as fh:
        fh.write(spool_id + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(marker)
    fsync_dir(marker.parent)


def _camera_dirs(spool: Path) -> list[Path]:
    return sorted(
        p
        for p in spool.iterdir()
        if p.is_dir() and p.name != QUARANTINE_DIR and not p.name.startswith(".")
    )


def _run_dirs(camera_dir: Path) -> list[Path]:
    return sorted(p for p in camera_dir.iterdir() if p.is_dir())


def _segment_files(rd: Path) -> list[tuple[int, Path]]:
    """Segment files of a run in ffmpeg's order; other names are reported and left alone."""
    try:
        entries = list(rd.iterdir())
    except FileNotFoundError:
        return []
    files = []
    for path in entries:
        seq = segment_seq(path)
        if seq is not None and path.is_file():
            files.append((seq, path))
        else:
            log.warning("spool: unexpected %s in a run directory; left alone", path)
    return sorted(files)


def _has_segments(spool: Path) -> bool:
    return any(
        segment_seq(f) is not None
        for camera_dir in _camera_dirs(spool)
        for rd in _run_dirs(camera_dir)
        for f in rd.iterdir()
    )


def _rmdir_if_empty(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return False
    except OSError:  # not empty
        return False
    fsync_dir(path.parent)
    return True
