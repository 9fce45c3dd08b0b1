"""The disk budget (docs/design/segments.md step 7, agent/eviction.py): the pure decision, then
eviction of a real recording (synced first, unsynced as losses), a kill -9 between the
eviction's commit and its unlink, and the running agent keeping its spool within budget."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.cli import print_storage_status
from agent.config import AgentConfig, CameraConfig, StorageConfig, load_config
from agent.eviction import (
    Budget,
    Candidate,
    Eviction,
    Evictor,
    Usage,
    bytes_per_day,
    bytes_to_free,
    capacity_bytes,
    coalesce_losses,
    eviction_order,
    plan_eviction,
    retention_days,
)
from agent.segmenter import CameraRecorder
from agent.service import Agent, restart_required_keys
from agent.spool import reconcile, run_dir
from agent.store import MIGRATIONS, Segment, Store, _statements, open_db
from shared.messages import LossEvent, MessageRejected, PlateRead, decode
from tests.agent.spool_child import AGENT_ID, CAMERA_KEY
from tests.agent.test_reload import _cli_status, camera_entry, config_data, save, wait_until
from tests.agent.test_segmenter import camera_config, record_for
from tests.agent.test_spool import REPO, check_invariants, reconcile_at

MIB = 1024**2


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "agent.sqlite3", AGENT_ID)
    await s.open()
    yield s
    await s.close()


# --- (a) the decision, without I/O ---------------------------------------------------------


def cand(
    start_s: int, size: int = 100, synced: bool = False, camera: str = "c1", run: str = "r1"
) -> Candidate:
    """A 2 s segment of ``run`` starting at ``start_s``; its seq follows from the start."""
    return Candidate(
        segment_id=f"{camera}-{run}-{start_s}", camera_id=camera, run_id=run, seq=start_s // 2,
        path=f"/spool/{camera}/{run}/{start_s // 2:06d}.mp4", start_ms=start_s * 1000,
        duration_ms=2000, size_bytes=size, synced=synced,
    )  # fmt: skip


@pytest.mark.timeout(10)
def test_bytes_to_free_takes_the_stricter_limit_and_never_more_than_the_spool() -> None:
    usage = Usage(used_bytes=1000, free_bytes=500)
    assert bytes_to_free(usage, Budget()) == 0
    assert bytes_to_free(usage, Budget(max_bytes=1000)) == 0
    assert bytes_to_free(usage, Budget(max_bytes=700)) == 300
    assert bytes_to_free(usage, Budget(min_free_bytes=500)) == 0
    assert bytes_to_free(usage, Budget(min_free_bytes=900)) == 400
    assert bytes_to_free(usage, Budget(max_bytes=700, min_free_bytes=900)) == 400
    assert bytes_to_free(usage, Budget(max_bytes=100, min_free_bytes=900)) == 900
    # Other files filled the disk: evicting all video is the most that can be done.
    assert bytes_to_free(usage, Budget(min_free_bytes=10_000)) == 1000
    assert bytes_to_free(Usage(0, 0), Budget(max_bytes=1, min_free_bytes=10)) == 0
    # Crops count in max_bytes and are never evicted: video makes room for them.
    with_crops = Usage(used_bytes=1000, free_bytes=500, image_bytes=200)
    assert bytes_to_free(with_crops, Budget(max_bytes=1000)) == 200
    assert bytes_to_free(with_crops, Budget(max_bytes=100)) == 1000


@pytest.mark.timeout(10)
def test_order_is_synced_oldest_first_then_unsynced_oldest_first() -> None:
    old_unsynced, old_synced = cand(0), cand(2, synced=True)
    new_unsynced, new_synced = cand(4), cand(6, synced=True)
    every = [new_synced, new_unsynced, old_synced, old_unsynced]
    assert eviction_order(every) == [old_synced, new_synced, old_unsynced, new_unsynced]
    # Only as much as needed: one synced segment covers 50 bytes; unsynced ones stay.
    assert plan_eviction(50, every) == [old_synced]
    assert plan_eviction(100, every) == [old_synced]
    assert plan_eviction(101, every) == [old_synced, new_synced]
    # Unsynced only once every synced one is chosen, and then the oldest first.
    assert plan_eviction(201, every) == [old_synced, new_synced, old_unsynced]
    assert plan_eviction(10_000, every) == [old_synced, new_synced, old_unsynced, new_unsynced]
    assert plan_eviction(10_000, every, max_segments=3) == [old_synced, new_synced, old_unsynced]
    assert plan_eviction(0, every) == []


@pytest.mark.timeout(10)
def test_losses_coalesce_consecutive_files_of_one_camera_only() -> None:
    a = [cand(s) for s in (0, 2, 4, 8, 10)]  # seq 0, 1, 2, then 4, 5: seq 3 is not evicted
    other_run = [cand(12, run="r2"), cand(14, run="r2")]
    other_camera = [cand(1, camera="c2"), cand(3, camera="c2")]
    synced = cand(6, synced=True)  # seq 3: central has it, so no loss covers it
    groups = coalesce_losses([*other_run, synced, *reversed(a), *other_camera])
    assert groups == [a[:3], other_camera, a[3:], other_run]
    assert coalesce_losses([synced]) == []


@pytest.mark.timeout(10)
def test_retention_from_measured_bitrate_and_budget() -> None:
    assert bytes_per_day(1000, 30_000) is None  # under a minute says too little
    assert bytes_per_day(0, 3_600_000) is None
    rate = bytes_per_day(10 * MIB, 3_600_000)
    assert rate == 240 * MIB
    usage = Usage(used_bytes=100 * MIB, free_bytes=900 * MIB)
    assert capacity_bytes(usage, Budget(max_bytes=480 * MIB)) == 480 * MIB
    assert capacity_bytes(usage, Budget(min_free_bytes=200 * MIB)) == 800 * MIB
    assert capacity_bytes(usage, Budget(480 * MIB, 700 * MIB)) == 300 * MIB
    assert capacity_bytes(usage, Budget(min_free_bytes=2000 * MIB)) == 0
    crops = Usage(used_bytes=100 * MIB, free_bytes=900 * MIB, image_bytes=30 * MIB)
    assert capacity_bytes(crops, Budget(max_bytes=480 * MIB)) == 450 * MIB
    assert retention_days(480 * MIB, rate) == 2.0
    assert retention_days(480 * MIB, None) is None


@pytest.mark.timeout(10)
def test_loss_event_wire_form_and_storage_config() -> None:
    loss = LossEvent(
        loss_id=uuid.uuid4(), agent_id=AGENT_ID, camera_id=uuid.uuid4(), start_ms=1000,
        end_ms=5000, segments=2, size_bytes=300, reason="disk_budget",
    )  # fmt: skip
    assert decode(loss.model_dump_json().encode(), "loss_event") == loss
    for bad in ({"end_ms": 999}, {"reason": "because"}, {"segments": 0}):
        with pytest.raises(MessageRejected):
            decode(loss.model_copy(update=bad).model_dump_json().encode(), "loss_event")

    default = StorageConfig()
    assert (default.max_bytes, default.min_free_bytes, default.check_seconds) == (
        None, 2 * 1024**3, 10,
    )  # fmt: skip
    with pytest.raises(ValidationError, match="set max_bytes or min_free_bytes"):
        StorageConfig(min_free_bytes=None)
    with pytest.raises(ValidationError):
        StorageConfig(max_bytes=1000)  # a typo for MB, surely
    base = {
        "agent_id": str(AGENT_ID), "city_id": str(uuid.uuid4()), "data_dir": "/x",
        "central": {"api_url": "http://c/", "amqp_url": "amqp://a:b@c/", "token": "t"},
    }  # fmt: skip
    old = AgentConfig.model_validate(base)
    new = AgentConfig.model_validate({**base, "storage": {"max_bytes": 5 * MIB}})
    assert restart_required_keys(old, new) == []  # the budget applies live


@pytest.mark.timeout(10)
def test_status_prints_budget_usage_and_retention(capsys: pytest.CaptureFixture[str]) -> None:
    print_storage_status(
        {
            "max_bytes": 500 * 1024**3, "min_free_bytes": 2 * 1024**3, "check_seconds": 10,
            "last_error": None,
            "last_check": {
                "checked_ms": 10 * 86_400_000, "used_bytes": 123 * 1024**3,
                "free_bytes": 300 * 1024**3, "segments": 4567, "capacity_bytes": 500 * 1024**3,
                "bytes_per_day": 50 * 1024**3, "retention_days": 10.0,
                "oldest_segment_ms": 7 * 86_400_000, "evicted_segments": 12,
                "evicted_bytes": 3 * MIB, "evicted_unsynced": 2,
            },
        }
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "at most 500.0 GiB of video, keep 2.0 GiB free (checked every 10 s)" in out
    assert "123.0 GiB in 4567 segment(s); 300.0 GiB free" in out
    assert "recording 50.0 GiB/day (last hours): the budget holds about 10.0 day(s)" in out
    assert "(3.0 day(s) ago)" in out
    assert "evicted so far: 12 segment(s), 3.0 MiB; 2 of them never synced" in out


@pytest.mark.timeout(10)
def test_migration_of_an_existing_store_counts_and_orders_what_is_there(tmp_path: Path) -> None:
    db = tmp_path / "agent.sqlite3"
    conn = sqlite3.connect(db, isolation_level=None)
    for script in MIGRATIONS[:3]:  # a store as the previous release left it
        for statement in _statements(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    for n, (sent, lost) in enumerate([(5, None), (None, None), (None, 7)]):
        conn.execute(
            "INSERT INTO segments (segment_id, camera_id, run_id, seq, path, start_ms, "
            "duration_ms, size_bytes, sha256, codec, created_ms, lost_ms) "
            "VALUES (?, 'c', 'r', ?, ?, ?, 2000, ?, 'x', 'h264', 0, ?)",
            (f"s{n}", n, f"/p/{n}", n * 2000, 100 * (n + 1), lost),
        )
        conn.execute(
            "INSERT INTO outbox (kind, priority, ref_id, payload, created_ms, sent_ms) "
            "VALUES ('segment', 40, ?, '{}', 0, ?)",
            (f"s{n}", sent),
        )
    conn.close()
    store = open_db(db)
    assert store.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert store.execute("SELECT segment_id, synced_ms FROM segments ORDER BY 1").fetchall() == [
        ("s0", 5), ("s1", None), ("s2", None),
    ]  # fmt: skip
    assert store.execute("SELECT live_segments, live_bytes FROM spool_usage").fetchone() == (
        2, 300,
    )  # fmt: skip
    # From now on the triggers keep both up to date.
    store.execute("UPDATE outbox SET sent_ms = 9 WHERE ref_id = 's1'")
    store.execute("UPDATE segments SET evicted_ms = 1 WHERE segment_id = 's0'")
    assert store.execute("SELECT synced_ms FROM segments WHERE segment_id = 's1'").fetchone() == (
        9,
    )  # fmt: skip
    assert store.execute("SELECT live_segments, live_bytes FROM spool_usage").fetchone() == (
        1, 200,
    )  # fmt: skip
    store.close()


# --- helpers on a real recording -----------------------------------------------------------


async def sql(store: Store, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return await store._run(lambda: store.db.execute(query, params).fetchall())


async def record_run(cam: CameraConfig, store: Store, spool: Path, seconds: float) -> list[Segment]:
    """Record one run of ``cam`` and reconcile (as a restart would); its segments by seq."""
    await reconcile(store, spool)
    before = {r for r, _ in await store.runs()}
    await record_for(CameraRecorder(CAMERA_KEY, cam, store, spool), seconds)
    await reconcile(store, spool)
    (run_id,) = [r for r, _ in await store.runs() if r not in before]
    ids = await sql(store, "SELECT segment_id FROM segments WHERE run_id = ? ORDER BY seq",
                    (str(run_id),))  # fmt: skip
    segments = [await store.segment(i) for (i,) in ids]
    return [s for s in segments if s is not None]


async def check_budget(store: Store, spool: Path, max_bytes: int) -> list[Eviction]:
    evictor = Evictor(store, spool, lambda: Budget(max_bytes=max_bytes))
    done = await evictor.check()
    assert evictor.last_check is not None and evictor.last_check["used_bytes"] <= max_bytes
    return done


async def loss_events(store: Store) -> list[LossEvent]:
    rows = await sql(store, "SELECT payload FROM outbox WHERE kind = 'loss_event' ORDER BY id")
    return [LossEvent.model_validate_json(r[0]) for r in rows]


def ids(*segments: Segment) -> list[str]:
    return [str(s.segment_id) for s in segments]


def end(seg: Segment) -> int:
    return seg.start_ms + seg.duration_ms


async def used(store: Store) -> int:
    return (await store.spool_usage()).live_bytes


# --- (b) eviction of a real recording ------------------------------------------------------


@pytest.mark.timeout(150)
async def test_synced_evicted_first_unsynced_only_after_as_losses(
    camera: Any, store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    cam = camera_config(camera.url)
    a = await record_run(cam, store, spool, 14)
    assert len(a) >= 6, a
    b = await record_run(cam, store, spool, 5)
    assert b, "the second run registered nothing"
    assert await used(store) == sum(s.size_bytes for s in a + b)
    reads = [
        PlateRead(
            read_id=uuid.uuid4(), agent_id=AGENT_ID, camera_id=cam.id, plate=f"BRA2E{n:02d}",
            confidence=0.9, seen_ms=a[0].start_ms + 500, segment_id=a[0].segment_id,
        )
        for n in range(3)
    ]  # fmt: skip
    assert await store.add_plate_reads(reads) == 3
    plates = "SELECT * FROM plate_reads ORDER BY read_id"
    plate_rows = "SELECT * FROM outbox WHERE kind = 'plate_read' ORDER BY id"
    plates_before, plate_rows_before = await sql(store, plates), await sql(store, plate_rows)
    # The relay is not the subject: mark a1 and a2 acknowledged directly.
    outbox = {r.ref_id: r.id for r in await store.pending(limit=1000)}
    for seg in (a[1], a[2]):
        await store.mark_sent(outbox[str(seg.segment_id)])

    # 1. Over budget by a1 + a2: exactly the synced ones go, though a0 is older. No loss.
    (ev,) = await check_budget(store, spool, await used(store) - a[1].size_bytes - a[2].size_bytes)
    assert [c.segment_id for c in ev.segments] == ids(a[1], a[2])
    assert ev.losses == () and await loss_events(store) == []
    assert a[0].path.exists() and not a[1].path.exists() and not a[2].path.exists()
    check_invariants(store.path, spool)

    # 2. No synced segment left: the oldest unsynced go, and central will hear of them.
    # a0 and a3 are not consecutive (a1, a2 lie between, and central has them): two losses.
    need = a[0].size_bytes + a[3].size_bytes + a[4].size_bytes
    (ev,) = await check_budget(store, spool, await used(store) - need)
    assert [c.segment_id for c in ev.segments] == ids(a[0], a[3], a[4])
    losses = await loss_events(store)
    assert list(ev.losses) == losses
    assert [(x.start_ms, x.end_ms, x.segments, x.size_bytes) for x in losses] == [
        (a[0].start_ms, end(a[0]), 1, a[0].size_bytes),
        (a[3].start_ms, end(a[4]), 2, a[3].size_bytes + a[4].size_bytes),
    ]
    for x in losses:
        assert (x.agent_id, x.camera_id, x.reason) == (AGENT_ID, cam.id, "disk_budget")
    dropped = await sql(
        store,
        "SELECT ref_id, sent_ms, dropped_ms, last_error FROM outbox WHERE kind = 'segment' "
        "AND dropped_ms IS NOT NULL ORDER BY ref_id",
    )
    assert sorted(r[0] for r in dropped) == sorted(ids(a[0], a[3], a[4]))
    assert all(r[1] is None and str(r[3]).startswith("segment evicted unsynced") for r in dropped)
    pending = await store.pending(limit=1000)
    assert {r.ref_id for r in pending if r.kind == "segment"}.isdisjoint(ids(*a[:5]))
    assert {r.ref_id for r in pending if r.kind == "loss_event"} == {str(x.loss_id) for x in losses}
    assert not any(s.path.exists() for s in a[:5]) and all(s.path.exists() for s in a[5:])

    # 3. The rest of run A: its directory goes with its last file (run B is newer, so no
    # ffmpeg writes there any more). The rest is one run of consecutive files: one loss.
    rest = a[5:]
    (ev,) = await check_budget(store, spool, await used(store) - sum(s.size_bytes for s in rest))
    assert [c.segment_id for c in ev.segments] == ids(*rest)
    (last,) = ev.losses
    assert (last.start_ms, last.end_ms, last.segments) == (rest[0].start_ms, end(rest[-1]),
                                                           len(rest))  # fmt: skip
    assert not run_dir(spool, CAMERA_KEY, a[0].run_id).exists()
    assert all(s.path.exists() for s in b)

    # Plate reads and their outbox rows were never touched; the store agrees with the disk.
    assert await sql(store, plates) == plates_before
    assert await sql(store, plate_rows) == plate_rows_before
    check_invariants(store.path, spool)
    assert not (await reconcile(store, spool)).changed, "evicted rows are not losses to recovery"
    usage = await store.spool_usage()
    assert (usage.evicted_segments, usage.evicted_unsynced) == (len(a), len(a) - 2)
    assert usage.live_bytes == sum(s.size_bytes for s in b)

    # 4. History: once the evicted rows are older than history_days, the hourly purge forgets
    # them and their outbox rows; live segments, plate reads and loss events stay.
    plan = await sql(
        store, "EXPLAIN QUERY PLAN SELECT segment_id FROM segments WHERE (unlinked_ms IS NOT "
        "NULL OR lost_ms IS NOT NULL) AND coalesce(unlinked_ms, lost_ms) < 0 LIMIT 10",
    )  # fmt: skip
    assert "segments_history" in str(plan), plan
    month_later = 31 * 86_400_000
    evictor = Evictor(store, spool, lambda: Budget(max_bytes=MIB * 1024, history_days=30),
                      clock_ms=lambda: end(b[-1]) + month_later)  # fmt: skip
    assert await evictor.purge_history(evictor.budget()) == len(a)
    assert await evictor.purge_history(evictor.budget()) == 0, "at most hourly"
    left = await sql(store, "SELECT segment_id FROM segments ORDER BY seq")
    assert [r[0] for r in left] == ids(*b)
    segment_rows = await sql(store, "SELECT ref_id FROM outbox WHERE kind = 'segment'")
    assert sorted(r[0] for r in segment_rows) == sorted(ids(*b))
    assert len(await loss_events(store)) == 3
    assert await sql(store, plates) == plates_before
    assert await store.spool_usage() == usage, "only finished rows went"
    check_invariants(store.path, spool)
    assert not (await reconcile(store, spool)).changed


# --- (c) kill -9 between the eviction's commit and its unlink ------------------------------


@pytest.mark.timeout(120)
async def test_crash_between_eviction_commit_and_unlink(camera: Any, tmp_path: Path) -> None:
    db, spool = tmp_path / "agent.sqlite3", tmp_path / "spool"
    store = Store(db, AGENT_ID)
    await store.open()
    try:
        a = await record_run(camera_config(camera.url), store, spool, 9)
        assert len(a) >= 3, a
        outbox = {r.ref_id: r.id for r in await store.pending(limit=1000)}
        await store.mark_sent(outbox[str(a[0].segment_id)])
    finally:
        await store.close()

    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.agent.eviction_child", str(db),
        str(a[0].size_bytes + a[1].size_bytes), cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await child.communicate()
    assert child.returncode == -9 and out.strip() == b"2", (child.returncode, out)
    # Committed (a0 synced, a1 a loss) and killed before any unlink: both files are there.
    assert a[0].path.exists() and a[1].path.exists()
    # As if it had died half-way through the unlinks: one file is gone already.
    a[0].path.unlink()

    counts = await reconcile_at(db, spool)  # asserts that a second recovery changes nothing
    assert counts["evictions_finished"] == 2, counts
    assert counts["missing"] == 0 and counts["missing_unsent"] == 0, "an eviction is not a loss"
    assert counts["registered"] == 0 and counts["quarantined"] == 0, counts
    assert not a[0].path.exists() and not a[1].path.exists()
    assert all(s.path.exists() for s in a[2:])
    check_invariants(db, spool)  # includes: the unsynced a1 is covered by a loss event
    store = Store(db, AGENT_ID)
    await store.open()
    try:
        (loss,) = await loss_events(store)
        assert (loss.start_ms, loss.end_ms, loss.segments) == (a[1].start_ms, end(a[1]), 1)
        assert (await store.backlog())["lost"] == 0
    finally:
        await store.close()


# --- (d) the running agent keeps its spool within budget -----------------------------------


@contextlib.asynccontextmanager
async def recovered_store(data_dir: Path) -> AsyncIterator[Store]:
    """The stopped agent's store after start-up recovery, its invariants checked."""
    db, spool = data_dir / "agent.sqlite3", data_dir / "segments"
    await reconcile_at(db, spool)
    check_invariants(db, spool)
    store = Store(db, AGENT_ID)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def agent_with_budget(
    tmp_path: Path, url: str, storage: dict[str, Any]
) -> AsyncIterator[tuple[Agent, Path, dict[str, Any], asyncio.Task[None]]]:
    data = config_data(tmp_path / "agent", {CAMERA_KEY: camera_entry(url)})
    data["storage"] = storage
    path = tmp_path / "agent.yaml"
    save(path, data)
    agent = Agent(load_config(path), path)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent, path, data, task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.mark.timeout(120)
async def test_running_agent_stays_within_budget_and_reports_it(
    camera: Any, tmp_path: Path
) -> None:
    budget = MIB  # four or five of the test camera's 2 s segments
    storage = {"max_bytes": budget, "min_free_bytes": None, "check_seconds": 1}
    async with agent_with_budget(tmp_path, camera.url, storage) as (agent, path, data, task):

        def evicted() -> dict[str, Any] | None:
            check = agent.evictor.last_check
            return check if check and check["evicted_segments"] >= 3 else None

        check = await wait_until("three evictions", evicted, 60, task)
        assert check["max_bytes"] == budget
        assert check["used_bytes"] <= budget  # right after a check
        assert check["evicted_unsynced"] == check["evicted_segments"]  # central is unreachable
        status = await wait_until(
            "the budget in status.json",
            lambda: (s := agent.status()["storage"])["last_check"] and s,
            10,
            task,
        )
        assert status["max_bytes"] == budget and status["last_error"] is None
        rc, out = await asyncio.to_thread(_cli_status, path)
        assert rc == 0, out
        assert "disk budget: at most 1.0 MiB of video (checked every 1 s)" in out, out
        assert "evicted so far:" in out and "reported to central as losses" in out, out

        # A new budget applies live, without a restart.
        data["storage"] = {**storage, "max_bytes": 2 * MIB}
        save(path, data)
        await wait_until(
            "the new budget", lambda: agent.status()["storage"]["max_bytes"] == 2 * MIB, 20, task
        )
        assert agent.restart_required == ()
        recorder = agent.recorders[CAMERA_KEY]
        assert recorder.status == "online", recorder.reason

    async with recovered_store(Path(data["data_dir"])) as store:
        # One ffmpeg run throughout: eviction never pulled the directory from under it.
        assert len(await store.runs()) == 1
        losses = await loss_events(store)
        usage = await store.spool_usage()
        assert sum(x.segments for x in losses) == usage.evicted_unsynced >= 3
        assert {x.agent_id for x in losses} == {uuid.UUID(data["agent_id"])}
