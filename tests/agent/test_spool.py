"""Crash safety of the spool (docs/design/segments.md) against the real camera and ffmpeg:
kill -9 of the agent or of ffmpeg at any moment, then start-up recovery restores I1-I3."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.segmenter import CameraRecorder
from agent.spool import MARKER_FILE, QUARANTINE_DIR, SpoolMismatch, reconcile
from agent.store import Segment, Store
from shared.messages import LossEvent
from tests.agent.spool_child import AGENT_ID, CAMERA_KEY
from tests.agent.test_segmenter import camera_config, record_for

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "agent.sqlite3", AGENT_ID)
    await s.open()
    yield s
    await s.close()


# --- helpers: processes --------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process, None if it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    state, ppid = text[text.rindex(")") + 2 :].split()[:2]
    return comm, state, int(ppid)


def ffmpeg_children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[0] == "ffmpeg" and st[2] == parent and st[1] not in "ZX":
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] not in "ZX"  # a zombie is dead, waiting to be reaped


async def wait_dead(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


# --- helpers: the store and the spool, read as a bystander ---------------------------------


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return []
    finally:
        conn.close()


def registered(db: Path) -> int:
    rows = query(db, "SELECT count(*) FROM segments")
    return int(rows[0][0]) if rows else 0


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


def spool_files(spool: Path) -> list[Path]:
    """Segment files in camera/run directories (quarantine excluded)."""
    return [
        p
        for p in spool.rglob("*.mp4")
        if p.relative_to(spool).parts[0] != QUARANTINE_DIR and len(p.relative_to(spool).parts) == 3
    ]


def new_file_watch(spool: Path) -> Callable[[], bool]:
    """True once a segment file appears that was not there at the first call."""
    seen: set[Path] | None = None

    def check() -> bool:
        nonlocal seen
        files = set(spool_files(spool))
        if seen is None:
            seen = files
        return bool(files - seen)

    return check


def check_invariants(db: Path, spool: Path) -> None:
    rows = query(
        db,
        "SELECT segment_id, run_id, seq, path, size_bytes, sha256, lost_ms, evicted_ms, "
        "unlinked_ms FROM segments",
    )
    paths = {r[3] for r in rows}
    # I1: every row not recorded as lost or evicted has its file, with the registered size.
    # An evicted row whose unlink is recorded has no file any more (step 7).
    for segment_id, _, _, path, size, _, lost_ms, evicted_ms, unlinked_ms in rows:
        if lost_ms is None and evicted_ms is None:
            assert Path(path).is_file(), f"I1: row {segment_id} has no file {path}"
            assert Path(path).stat().st_size == size, f"I1: {path} changed size"
        if unlinked_ms is not None:
            assert evicted_ms is not None, f"row {segment_id} unlinked but not evicted"
            assert not Path(path).exists(), f"evicted {path} is still on disk"
    # I2: every segment file in the spool has a row; quarantined files never do.
    for path in spool_files(spool):
        assert str(path) in paths, f"I2: {path} has no row"
    for path in (spool / QUARANTINE_DIR).rglob("*"):
        assert str(path) not in paths, f"quarantined {path} is registered"
    # I3: one row per file of a run, one outbox row per segment. (Not "distinct SHA-256": the
    # test camera loops a 10 s scene, so the first segments of two runs can be byte-identical.)
    assert len({(r[1], r[2]) for r in rows}) == len(rows), "a run's file registered twice"
    outbox = query(db, "SELECT ref_id FROM outbox WHERE kind = 'segment'")
    assert sorted(o[0] for o in outbox) == sorted(r[0] for r in rows)
    # Nothing pending points at a lost file.
    stale = query(
        db,
        "SELECT o.id FROM outbox o JOIN segments s ON s.segment_id = o.ref_id "
        "WHERE o.sent_ms IS NULL AND o.dropped_ms IS NULL "
        "AND (s.lost_ms IS NOT NULL OR s.evicted_ms IS NOT NULL)",
    )
    assert stale == [], "a lost or evicted segment is still pending upload"
    # Central hears of every loss: each segment whose upload was dropped unsent lies inside a
    # loss event of its camera. The live-bytes counter (triggers) matches the rows.
    dropped = query(
        db,
        "SELECT s.segment_id, s.camera_id, s.start_ms, s.start_ms + s.duration_ms FROM segments s "
        "JOIN outbox o ON o.kind = 'segment' AND o.ref_id = s.segment_id "
        "WHERE o.dropped_ms IS NOT NULL AND o.sent_ms IS NULL",
    )
    losses = [
        LossEvent.model_validate_json(p[0])
        for p in query(db, "SELECT payload FROM outbox WHERE kind = 'loss_event'")
    ]
    for segment_id, camera_id, start, end in dropped:
        assert any(
            str(x.camera_id) == camera_id and x.start_ms <= start and end <= x.end_ms
            for x in losses
        ), f"segment {segment_id} was lost unsynced but no loss event covers it"
    usage = query(db, "SELECT live_segments, live_bytes FROM spool_usage")
    live = query(
        db,
        "SELECT count(*), coalesce(sum(size_bytes), 0) FROM segments "
        "WHERE lost_ms IS NULL AND evicted_ms IS NULL",
    )
    assert usage == live, f"spool_usage {usage} != the live rows {live}"
    # No empty run directories left behind.
    for camera_dir in spool.iterdir():
        if camera_dir.is_dir() and camera_dir.name != QUARANTINE_DIR:
            for rd in camera_dir.iterdir():
                assert any(rd.iterdir()), f"empty run directory {rd}"


async def reconcile_at(db: Path, spool: Path, **kwargs: Any) -> dict[str, int]:
    """Start-up recovery as the next agent would run it; returns the counts. Asserts that a
    second recovery changes nothing."""
    store = Store(db, AGENT_ID)
    await store.open()
    try:
        first = await reconcile(store, spool, **kwargs)
        again = await reconcile(store, spool)
        assert not again.changed, f"second reconcile changed {again.counts()}"
        return first.counts()
    finally:
        await store.close()


# --- kill -9 of the agent ------------------------------------------------------------------


async def start_child(
    db: Path, spool: Path, url: str, log_path: Path
) -> asyncio.subprocess.Process:
    with log_path.open("ab") as log_file:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.agent.spool_child",
            str(db), str(spool), url, str(uuid.uuid4()),
            cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip


async def kill_agent_when(
    db: Path,
    spool: Path,
    url: str,
    log_path: Path,
    min_new: int,
    delay_s: float = 0.0,
    then: Callable[[], bool] | None = None,
) -> list[int]:
    """Run the agent in a child process; once it has registered ``min_new`` segments, wait
    ``delay_s`` (or poll until ``then()``) and kill -9 it. Returns the pids of its ffmpeg, after
    checking they died with it."""
    before = registered(db)
    child = await start_child(db, spool, url, log_path)
    try:
        await until(
            lambda: registered(db) >= before + min_new or child.returncode is not None,
            60,
            f"{min_new} segment(s) registered by the child agent",
        )
        assert child.returncode is None, f"child agent exited: {tail(log_path)}"
        await asyncio.sleep(delay_s)
        deadline = time.monotonic() + 30
        while then is not None and not then():
            assert time.monotonic() < deadline, "the kill condition never came"
            await asyncio.sleep(0.002)
        ffmpeg = ffmpeg_children(child.pid)
        child.kill()  # SIGKILL: no finally, no atexit, no cleanup in the agent
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert ffmpeg, "the child agent was running no ffmpeg when killed"
    for pid in ffmpeg:
        assert await wait_dead(pid), f"ffmpeg {pid} survived kill -9 of its agent"
    return ffmpeg


@pytest.mark.timeout(120)
async def test_kill_agent_after_two_segments(camera: Any, tmp_path: Path) -> None:
    db, spool = tmp_path / "agent.sqlite3", tmp_path / "spool"
    await kill_agent_when(db, spool, camera.url, tmp_path / "child.log", 2, 0.0)
    assert registered(db) >= 2
    counts = await reconcile_at(db, spool)
    log.info("after kill -9 at the second segment: %s", counts)
    # The file ffmpeg was writing died with it: quarantined, never registered (or, if it was
    # complete but unlisted, registered as recovered).
    assert counts["quarantined"] + counts["registered"] <= 2, counts
    check_invariants(db, spool)


@pytest.mark.timeout(300)
async def test_kill_agent_at_random_moments(camera: Any, tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    db, spool = tmp_path / "agent.sqlite3", tmp_path / "spool"
    totals: dict[str, int] = {}
    for i in range(3):
        delay = rng.uniform(0.0, 2.5)
        log.info("seed %d iteration %d: kill %.2fs after a registration", seed, i, delay)
        await kill_agent_when(db, spool, camera.url, tmp_path / "child.log", 1, delay)
        counts = await reconcile_at(db, spool)
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
        try:
            check_invariants(db, spool)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, iteration {i}, delay {delay:.2f}s: {exc}") from None
    log.info("seed %d totals %s", seed, totals)
    runs = query(db, "SELECT count(DISTINCT run_id) FROM segments")[0][0]
    assert runs >= 3, f"expected one run per agent start, got {runs} (seed {seed})"


@pytest.mark.timeout(180)
async def test_kill_agent_between_close_and_register(camera: Any, tmp_path: Path) -> None:
    """Killed the moment ffmpeg opens the next file: the invariants hold after recovery. When
    the kill lands before the closed file was registered (validation now takes well under a
    millisecond, so the agent often wins the race), recovery registers it chained to its
    predecessor; test_valid_orphans_registered_with_recovered_times covers that case for sure."""
    db, spool = tmp_path / "agent.sqlite3", tmp_path / "spool"
    for attempt in range(3):
        await kill_agent_when(
            db, spool, camera.url, tmp_path / "child.log", 1, then=new_file_watch(spool)
        )
        counts = await reconcile_at(db, spool)
        log.info("attempt %d, kill -9 as a file closed: %s", attempt, counts)
        check_invariants(db, spool)
        if counts["registered"]:
            (start, prev_end), *_ = query(
                db,
                "SELECT r.start_ms, p.start_ms + p.duration_ms FROM segments r JOIN segments p "
                "ON p.run_id = r.run_id AND p.seq = r.seq - 1 WHERE r.time_source = 'recovered'",
            )
            assert start == prev_end, "a recovered segment starts where its predecessor ends"
            return
    log.info("the agent registered the closed file before every kill; invariants held")


# --- kill -9 of ffmpeg alone ---------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_ffmpeg_killed_alone_restarts_and_truncated_file_is_quarantined(
    camera: Any, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    spool = tmp_path / "spool"
    await reconcile(store, spool)
    recorder = CameraRecorder(CAMERA_KEY, camera_config(camera.url), store, spool)
    task = asyncio.create_task(recorder.run())
    try:
        await until(lambda: recorder.segments_registered >= 1, 30, "a first segment")
        await asyncio.sleep(random.uniform(0.3, 1.2))  # mid-segment
        pid = recorder.ffmpeg_pid
        assert pid is not None and alive(pid)
        (killed_run, _), *_ = reversed(await store.runs())
        killed_at_ms = time.time_ns() // 1_000_000
        os.kill(pid, signal.SIGKILL)
        await until(lambda: f"run={killed_run} ended" in caplog.text, 15, "the run to end")
        assert not alive(pid)

        async def later_run_segments() -> list[tuple[Any, ...]]:
            return await store._run(
                lambda: store.db.execute(
                    "SELECT s.run_id, r.started_ms FROM segments s JOIN runs r USING (run_id) "
                    "WHERE s.run_id != ?",
                    [str(killed_run)],
                ).fetchall()
            )

        deadline = time.monotonic() + 30
        while not (later := await later_run_segments()):
            assert time.monotonic() < deadline, "the recorder did not record again"
            await asyncio.sleep(0.1)
        # Restarted after the backoff (1 s ± 20 %), not in a busy loop.
        assert later[0][1] - killed_at_ms >= 700, later
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # The truncated file of the killed run was handled when its ffmpeg exited: quarantined,
    # never registered; every other file of that run has its row.
    killed_dir = spool / CAMERA_KEY / str(killed_run)
    quarantined = list((spool / QUARANTINE_DIR / CAMERA_KEY).glob(f"{killed_run}-*.mp4"))
    recovered = await store._run(
        lambda: store.db.execute(
            "SELECT count(*) FROM segments WHERE run_id = ? AND time_source = 'recovered'",
            [str(killed_run)],
        ).fetchone()[0]
    )
    assert len(quarantined) + recovered == 1, (quarantined, recovered)
    known = await store.run_paths(killed_run)
    assert {str(p) for p in killed_dir.glob("*.mp4")} <= known
    # The cancelled run's last file (closed by ffmpeg on SIGTERM) waits for start-up recovery.
    await reconcile(store, spool)
    assert not (await reconcile(store, spool)).changed
    check_invariants(store.path, spool)


# --- recovery of files and rows ------------------------------------------------------------


async def recorded_run(camera: Any, store: Store, spool: Path, seconds: float) -> list[Segment]:
    """Record one run in-process, reconcile, and return its live segments in file order."""
    await reconcile(store, spool)
    await record_for(CameraRecorder(CAMERA_KEY, camera_config(camera.url), store, spool), seconds)
    await reconcile(store, spool)
    ids = await store._run(
        lambda: [
            r[0]
            for r in store.db.execute(
                "SELECT segment_id FROM segments WHERE time_source = 'live' ORDER BY seq"
            )
        ]
    )
    segments = [await store.segment(i) for i in ids]
    return [s for s in segments if s is not None]


async def forget_rows(store: Store, *segments: Segment) -> None:
    """As if the agent died between step 1 and step 4: the files exist, the rows never did."""

    def delete() -> None:
        with store.db.atomic():
            for seg in segments:
                store.db.execute("DELETE FROM outbox WHERE ref_id = ?", [str(seg.segment_id)])
                store.db.execute("DELETE FROM segments WHERE segment_id = ?", [str(seg.segment_id)])

    await store._run(delete)


@pytest.mark.timeout(120)
async def test_valid_orphans_registered_with_recovered_times(
    camera: Any, store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    segments = await recorded_run(camera, store, spool, 9)
    assert len(segments) >= 3, segments
    first, later = segments[0], segments[2]
    assert first.seq == 0 and later.seq - 1 == segments[1].seq
    await forget_rows(store, first, later)
    # The segment ffmpeg was writing: a truncated copy in the same run, next file number.
    last = segments[-1]
    truncated = last.path.with_name(f"{last.seq + 100:06d}.mp4")
    truncated.write_bytes(last.path.read_bytes()[: last.size_bytes // 2])

    report = await reconcile(store, spool)
    assert report.counts()["registered"] == 2 and report.quarantined == [truncated]
    by_path = {s.path: s for s in report.registered}
    for old in (first, later):
        new = by_path[old.path]
        assert new.segment_id != old.segment_id and new.time_source == "recovered"
        assert (new.sha256, new.size_bytes, new.duration_ms, new.seq, new.run_id) == (
            old.sha256, old.size_bytes, old.duration_ms, old.seq, old.run_id,
        )  # fmt: skip
    # Chained to the registered predecessor: as exact as the live placement.
    assert abs(by_path[later.path].start_ms - later.start_ms) < 100
    # No predecessor: the file's mtime (when ffmpeg closed it) minus its duration.
    assert abs(by_path[first.path].start_ms - first.start_ms) < 2000
    assert await store.segment(str(by_path[later.path].segment_id)) == by_path[later.path]
    pending = {r.ref_id for r in await store.pending()}
    assert {str(s.segment_id) for s in report.registered} <= pending
    assert not (await reconcile(store, spool)).changed
    check_invariants(store.path, spool)


@pytest.mark.timeout(90)
async def test_deleted_file_is_recorded_lost_and_never_retried(
    camera: Any, store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    segments = await recorded_run(camera, store, spool, 7)
    assert len(segments) >= 2
    unsent, sent = segments[0], segments[1]
    rows = {r.ref_id: r for r in await store.pending()}
    await store.mark_sent(rows[str(sent.segment_id)].id)
    unsent.path.unlink()
    sent.path.unlink()

    report = await reconcile(store, spool)
    assert sorted(report.missing) == sorted([unsent.path, sent.path])
    assert report.missing_unsent == 1  # central never got `unsent`; it has `sent`
    assert report.registered == [] and report.quarantined == []
    # The relay will not see it again: its outbox row left the pending set, with the reason.
    assert str(unsent.segment_id) not in {r.ref_id for r in await store.pending()}
    dropped = await store._run(
        lambda: store.db.execute(
            "SELECT dropped_ms, last_error, sent_ms FROM outbox WHERE ref_id = ?",
            [str(unsent.segment_id)],
        ).fetchone()
    )
    assert dropped[0] is not None and dropped[1].startswith("segment lost: file missing")
    assert dropped[2] is None, "a lost segment must never look sent"
    backlog = await store.backlog()
    assert backlog["lost"] == 2 and backlog["sent"] == 1
    # Central will hear of the one it never got, and only of that one.
    assert backlog["pending"]["loss_event"] == 1
    (row,) = [r for r in await store.pending() if r.kind == "loss_event"]
    loss = LossEvent.model_validate(row.payload)
    assert (loss.agent_id, loss.camera_id, loss.reason) == (
        AGENT_ID,
        unsent.camera_id,
        "file_missing",
    )
    assert (loss.start_ms, loss.end_ms) == (unsent.start_ms, unsent.start_ms + unsent.duration_ms)
    assert (loss.segments, loss.size_bytes) == (1, unsent.size_bytes)
    assert row.ref_id == str(loss.loss_id)
    assert not (await reconcile(store, spool)).changed
    check_invariants(store.path, spool)


@pytest.mark.timeout(60)
async def test_spool_of_another_store_or_unmounted_disk_changes_nothing(
    store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    await reconcile(store, spool)
    run_id = uuid.uuid4()
    path = spool / CAMERA_KEY / str(run_id) / "000000.mp4"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * 100)
    await store.add_run(run_id, CAMERA_KEY, uuid.uuid4(), 0)
    seg = Segment(
        segment_id=uuid.uuid4(), camera_id=uuid.uuid4(), run_id=run_id, seq=0, path=path,
        start_ms=1_700_000_000_000, duration_ms=2000, size_bytes=100, sha256="a" * 64,
        codec="h264",
    )  # fmt: skip
    await store.add_segment(seg)
    moved = tmp_path / "elsewhere"
    spool.rename(moved)  # the disk is not mounted: an empty directory in its place
    spool.mkdir()
    with pytest.raises(SpoolMismatch, match="Is the right disk mounted"):
        await reconcile(store, spool)
    assert (await store.backlog())["lost"] == 0, "nothing may be marked lost"
    assert not (spool / MARKER_FILE).exists()

    other = Store(tmp_path / "other.sqlite3")  # a store that never saw this spool
    await other.open()
    try:
        with pytest.raises(SpoolMismatch):
            await reconcile(other, moved)
    finally:
        await other.close()

    spool.rmdir()
    moved.rename(spool)
    assert not (await reconcile(store, spool)).changed
    (spool / MARKER_FILE).unlink()  # the marker alone is gone: refuse too
    with pytest.raises(SpoolMismatch):
        await reconcile(store, spool)
    report = await reconcile(store, spool, adopt_spool=True)
    assert report.counts()["missing"] == 0 and (spool / MARKER_FILE).exists()
