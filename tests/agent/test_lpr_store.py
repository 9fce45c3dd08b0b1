"""Plate reads of the agent's LPR in the store: held until the segment holding their frame is
registered (linked in the segment's own transaction) or their hold time passes; watchlist alerts
queued at top priority with the read; the local watchlist loader; matching."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.lpr.watchlist import match_plate
from agent.store import PRIORITY, LprRead, Store, WatchEntry
from shared.messages import PlateRead, WatchlistAlert
from tests.agent.test_store import make_segment

AGENT = uuid.uuid4()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "a.sqlite3", AGENT)
    await s.open()
    yield s
    await s.close()


def lpr_read(camera_id: uuid.UUID, seen_ms: int, plate: str = "BRA2E19") -> LprRead:
    return LprRead(
        read_id=uuid.uuid4(), camera_id=camera_id, plate=plate, confidence=0.97,
        seen_ms=seen_ms, first_ms=seen_ms - 800, last_ms=seen_ms + 400, box=(10, 20, 120, 30),
        crop_path="/spool/lpr/c.jpg", crop_size_bytes=1234, crop_sha256="c" * 64,
    )  # fmt: skip


async def plate_rows(store: Store) -> list[tuple[str, str | None, int]]:
    def q() -> list[tuple[str, str | None, int]]:
        return store.db.execute("SELECT read_id, segment_id, held FROM plate_reads").fetchall()

    return await store._run(q)


async def test_read_waits_for_its_segment_then_goes_out_linked(
    store: Store, tmp_path: Path
) -> None:
    seg = make_segment(tmp_path)
    read = lpr_read(seg.camera_id, seg.start_ms + 500)
    assert await store.add_lpr_read(read, [], hold_ms=60_000)
    assert not await store.add_lpr_read(read, [], hold_ms=60_000)  # idempotent on read_id
    assert [r.kind for r in await store.pending()] == []  # held: no outbox row yet
    assert await store.release_plate_reads() == 0
    await store.add_segment(seg)  # the trigger links the read in this transaction
    assert await plate_rows(store) == [(str(read.read_id), str(seg.segment_id), 1)]
    assert await store.release_plate_reads() == 1
    rows = await store.pending()
    assert [(r.kind, r.ref_id) for r in rows if r.kind == "plate_read"] == [
        ("plate_read", str(read.read_id))
    ]
    message = PlateRead.model_validate(next(r for r in rows if r.kind == "plate_read").payload)
    assert message.segment_id == seg.segment_id and message.agent_id == AGENT
    assert message.plate == "BRA2E19" and message.seen_ms == read.seen_ms
    assert await store.release_plate_reads() == 0  # released once


async def test_read_of_a_closed_segment_goes_out_at_once(store: Store, tmp_path: Path) -> None:
    seg = make_segment(tmp_path)
    await store.add_segment(seg)
    read = lpr_read(seg.camera_id, seg.start_ms + 1999)
    await store.add_lpr_read(read, [], hold_ms=60_000)
    [(read_id, segment_id, held)] = await plate_rows(store)
    assert (segment_id, held) == (str(seg.segment_id), 0)
    assert [r.ref_id for r in await store.pending() if r.kind == "plate_read"] == [read_id]


async def test_unlinked_read_goes_out_when_its_hold_passes(store: Store, tmp_path: Path) -> None:
    seg = make_segment(tmp_path)
    other_camera = replace(seg, camera_id=uuid.uuid4(), path=tmp_path / "other.mp4")
    read = lpr_read(seg.camera_id, seg.start_ms + 500)
    await store.add_lpr_read(read, [], hold_ms=60_000)
    await store.add_segment(other_camera)  # same time, another camera: no link
    assert await store.release_plate_reads() == 0
    later = time.time_ns() // 1_000_000 + 61_000  # its hold has passed
    assert await store.release_plate_reads(now_ms=later) == 1
    [row] = [r for r in await store.pending() if r.kind == "plate_read"]
    assert row.payload["segment_id"] is None


async def test_alert_is_queued_first_with_its_read(store: Store, tmp_path: Path) -> None:
    camera = uuid.uuid4()
    read = lpr_read(camera, 1_700_000_000_000)
    alert = WatchlistAlert(
        alert_id=uuid.uuid4(), agent_id=AGENT, camera_id=camera, read_id=read.read_id,
        plate=read.plate, listed_plate="BRA2E18", match="possible", confidence=0.97,
        detected_ms=read.seen_ms,
    )  # fmt: skip
    await store.add_segment(make_segment(tmp_path))  # video waiting too
    await store.add_lpr_read(read, [alert], hold_ms=60_000)
    rows = await store.pending()
    assert rows[0].kind == "watchlist_alert" and rows[0].ref_id == str(alert.alert_id)
    assert WatchlistAlert.model_validate(rows[0].payload) == alert
    assert PRIORITY["alert"] < PRIORITY["plate_read"]


async def test_crops_count_in_the_spool_until_their_reads_are_forgotten(
    store: Store, tmp_path: Path
) -> None:
    seg = make_segment(tmp_path)
    await store.add_segment(seg)
    with_crop = lpr_read(seg.camera_id, seg.start_ms + 500)
    without = replace(lpr_read(seg.camera_id, seg.start_ms + 900, "ABC1234"),
                      crop_path=None, crop_size_bytes=None, crop_sha256=None)  # fmt: skip
    await store.add_lpr_read(with_crop, [], hold_ms=60_000)
    await store.add_lpr_read(without, [], hold_ms=60_000)
    usage = await store.spool_usage()
    assert (usage.crop_bytes, usage.live_bytes) == (1234, seg.size_bytes)
    # Once central has had them past the history, the rows (and files) go and so do the bytes.
    await store.release_plate_reads()
    for row in await store.pending():
        if row.kind in ("plate_read", "crop"):
            await store.mark_sent(row.id)
    sent = await store.sent_plate_reads(time.time_ns() // 1_000_000 + 1, 100)
    assert {r for r, _ in sent} == {str(with_crop.read_id), str(without.read_id)}
    assert await store.purge_plate_reads([r for r, _ in sent]) == 2
    assert (await store.spool_usage()).crop_bytes == 0


async def test_watchlist_loader_replaces_the_list(store: Store) -> None:
    assert await store.watchlist() == []
    list_id = uuid.uuid4()
    await store.replace_watchlist([WatchEntry("ABC1234", list_id, "furto"), WatchEntry("BRA2E19")])
    first = await store.watchlist_version()
    assert [e.plate for e in await store.watchlist()] == ["ABC1234", "BRA2E19"]
    assert (await store.watchlist())[0] == WatchEntry("ABC1234", list_id, "furto")
    assert await store.replace_watchlist([WatchEntry("XYZ9A99")]) == 1
    assert [e.plate for e in await store.watchlist()] == ["XYZ9A99"]
    assert await store.watchlist_version() != first


def test_watchlist_matching() -> None:
    entries = [WatchEntry("ABC1234"), WatchEntry("BRA2E19"), WatchEntry("QQQ1Q11")]
    assert [(m.entry.plate, m.match) for m in match_plate("BRA2E19", entries)] == [
        ("BRA2E19", "exact")
    ]
    # an old plate and its Mercosul conversion are the same vehicle
    assert [(m.entry.plate, m.match) for m in match_plate("ABC1C34", entries)] == [
        ("ABC1234", "exact")
    ]
    assert [(m.entry.plate, m.match) for m in match_plate("BRA2E18", entries)] == [
        ("BRA2E19", "possible")
    ]
    assert match_plate("ZZZ9Z99", entries) == []
    assert json.dumps([m.match for m in match_plate("QQQ1Q12", entries)]) == '["possible"]'


async def test_history_forgets_sent_alerts_and_thumbnails_never_unsent_rows(
    store: Store, tmp_path: Path
) -> None:
    camera = uuid.uuid4()
    read = lpr_read(camera, 1_700_000_000_000)
    alerts = [
        WatchlistAlert(
            alert_id=uuid.uuid4(), agent_id=AGENT, camera_id=camera, read_id=read.read_id,
            plate=read.plate, listed_plate=listed, match="possible", confidence=0.97,
            detected_ms=read.seen_ms,
        )
        for listed in ("BRA2E18", "BRA2E10")
    ]  # fmt: skip
    await store.add_lpr_read(read, alerts, hold_ms=60_000)

    def thumb(n: int) -> dict[str, object]:
        path = str(tmp_path / f"{n}.jpg")
        return {"thumbnail_id": str(uuid.uuid4()), "camera_id": str(camera), "taken_ms": n,
                "path": path, "size_bytes": 10, "sha256": "a" * 64}  # fmt: skip

    assert await store.add_thumbnail(thumb(1)) == []
    assert await store.add_thumbnail(thumb(2)) == [str(tmp_path / "1.jpg")]  # 1 dropped
    await store.add_thumbnail(thumb(3))  # drops 2
    pending = {r.ref_id: r for r in await store.pending()}
    sent_alert = pending[str(alerts[0].alert_id)]
    await store.mark_sent(sent_alert.id)

    def kinds() -> list[tuple[str, str]]:
        rows = store.db.execute(
            "SELECT kind, CASE WHEN sent_ms IS NOT NULL THEN 'sent' WHEN dropped_ms IS NOT NULL"
            " THEN 'dropped' ELSE 'pending' END FROM outbox ORDER BY id"
        ).fetchall()
        return [(str(k), str(s)) for k, s in rows]

    before = await store._run(kinds)
    assert await store.purge_sent_rows(0) == 0  # nothing is that old
    assert await store.purge_sent_rows(time.time_ns() // 1_000_000 + 1, limit=1) == 1
    assert await store.purge_sent_rows(time.time_ns() // 1_000_000 + 1) == 2
    after = await store._run(kinds)
    gone = [("watchlist_alert", "sent"), ("thumbnail", "dropped"), ("thumbnail", "dropped")]
    assert sorted(before) == sorted(after + gone)
    # the unsent alert, the newest thumbnail and the held read are all still there
    assert ("watchlist_alert", "pending") in after and ("thumbnail", "pending") in after
    assert await plate_rows(store) == [(str(read.read_id), None, 1)]
