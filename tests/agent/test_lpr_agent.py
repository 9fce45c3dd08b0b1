"""Plate recognition in the running agent, end to end: the real RTSP test camera (a looping scene
of cars with Brazilian plates and its ground truth) → ffmpeg sampling → the real models → one
read per car in SQLite, with its crop and its segment, and watchlist alerts queued while no
broker is reachable (central points at unused ports, as in test_reload). Also: a bad model is a
clear error at start-up; a reader that falls behind drops frames with memory bounded; the scene
video read frame by frame gives one read per passage without any suppression window."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.lpr import camera as lpr_camera
from agent.lpr.camera import FrameQueue
from agent.lpr.models import Recognizer
from agent.lpr.recognizer import FrameResult, Image, PlateReader
from agent.lpr.tracker import PlateTracker
from agent.store import Store, WatchEntry
from tests.agent.test_reload import camera_entry, config_data, running_agent, save

SCENE_LOOP_S = 10  # the test camera's scene (devstack.pytest_plugin.TEST_CAMERA_SECONDS)


def truth_plates(truth: Path) -> list[str]:
    return [v["plate"] for v in json.loads(truth.read_text())["vehicles"]]


def lpr_camera_entry(url: str, **lpr: Any) -> dict[str, Any]:
    return {**camera_entry(url, name="lpr"), "lpr": {"enabled": True, **lpr}}


def db_rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(data_dir / "agent.sqlite3")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def check_reads(data_dir: Path) -> None:
    """Each read: a sane confidence and passage, its crop on disk as recorded, and (nearly
    always) the segment holding its frame."""
    rows = db_rows(
        data_dir,
        "SELECT plate, confidence, seen_ms, first_ms, last_ms, segment_id, crop_path,"
        " crop_size_bytes, crop_sha256, box FROM plate_reads",
    )
    segments = dict(db_rows(data_dir, "SELECT segment_id, camera_id FROM segments"))
    linked = 0
    for plate, conf, seen, first, last, segment_id, crop, size, sha, box in rows:
        assert 0 < conf <= 1 and first <= seen <= last, plate
        data = Path(crop).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha
        image = cv2.imread(crop)
        assert image is not None and image.shape[1] >= json.loads(box)[2]
        linked += segment_id in segments
    # Segment starts follow the wall clock to within a frame or two: nearly every read lies
    # inside a registered segment of its camera.
    assert linked >= len(rows) - 1


@pytest.mark.timeout(240)
async def test_each_car_read_once_into_sqlite_with_alerts_offline(
    camera: Any, tmp_path: Path
) -> None:
    plates = truth_plates(camera.truth)
    # A watchlist loaded before the agent starts (as central's lists will be): one plate as
    # it is, one with its last digit changed (a "possible" match).
    near = plates[1][:6] + str((int(plates[1][6]) + 1) % 10)
    store = Store(tmp_path / "agent" / "agent.sqlite3")
    await store.open()
    await store.replace_watchlist([WatchEntry(plates[0], None, "furto"), WatchEntry(near)])
    await store.close()

    # with context frames, scaled down from the scene's 1280 px
    cameras = {"cam1": lpr_camera_entry(camera.url, context_frame=True, context_width=640)}
    async with running_agent(tmp_path, cameras) as run:
        data_dir = run.data_dir

        def read_plates() -> list[str]:
            return [r[0] for r in db_rows(data_dir, "SELECT plate FROM plate_reads")]

        await run.until(
            "every car of the scene read",
            lambda: set(plates) <= set(read_plates()),
            timeout_s=90,
        )
        # Another full loop of the scene: the same cars pass again (suppressed) and nothing
        # that is not a plate of the scene may appear.
        await asyncio.sleep(SCENE_LOOP_S + 2)
        lpr = run.agent.lpr.status()["cam1"]
        await run.until(
            "reads linked to their segments and queued",
            lambda: not db_rows(data_dir, "SELECT 1 FROM plate_reads WHERE held = 1"),
            timeout_s=40,
        )
        lpr_ffmpeg = run.agent.lpr.cameras["cam1"].source
    assert lpr_ffmpeg._proc is None  # the sampler's ffmpeg is gone with the agent

    got = read_plates()
    assert sorted(got) == sorted(plates), f"read {got}, truth {plates}"  # once each, no phantom
    assert lpr["frames_read"] > 5 * SCENE_LOOP_S and lpr["state"] == "running"

    check_reads(data_dir)

    outbox = db_rows(
        data_dir,
        "SELECT kind, priority, payload FROM outbox WHERE kind IN ('plate_read',"
        " 'watchlist_alert') AND sent_ms IS NULL",
    )
    queued = sorted(json.loads(p)["plate"] for k, _, p in outbox if k == "plate_read")
    assert queued == sorted(plates)  # each read once in the outbox, waiting for the broker
    alerts = {
        json.loads(p)["listed_plate"]: json.loads(p) for k, _, p in outbox if k == "watchlist_alert"
    }
    assert set(alerts) == {plates[0], near}
    assert alerts[plates[0]]["match"] == "exact" and alerts[plates[0]]["plate"] == plates[0]
    assert alerts[near]["match"] == "possible" and alerts[near]["plate"] == plates[1]
    assert {pr for k, pr, _ in outbox if k == "watchlist_alert"} == {0}  # first in line

    # Each read's context frame: on disk beside its crop, whole scene at 640 px, and in the
    # crop's outbox row so it travels with it.
    crops = [json.loads(p) for (p,) in db_rows(data_dir, "SELECT payload FROM outbox"
                                                          " WHERE kind = 'crop'")]  # fmt: skip
    assert len(crops) == len(plates)
    for crop in crops:
        context = crop["context"]
        data = await asyncio.to_thread(Path(context["path"]).read_bytes)
        assert len(data) == context["size_bytes"]
        assert hashlib.sha256(data).hexdigest() == context["sha256"]
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[:2] == (360, 640), image.shape


@pytest.mark.timeout(60)
@pytest.mark.parametrize("problem", ["missing", "not onnx"])
def test_bad_model_is_a_clear_error_at_start_up(camera: Any, tmp_path: Path, problem: str) -> None:
    model = tmp_path / "rec.onnx"
    if problem == "not onnx":
        model.write_text("not a model")
    data = config_data(
        tmp_path / "agent", {"cam1": lpr_camera_entry(camera.url, rec_model=str(model))}
    )
    path = tmp_path / "agent.yaml"
    save(path, data)
    for command in ("check-config", "run"):
        proc = subprocess.run(
            [sys.executable, "-m", "agent.cli", command, "--config", str(path)],
            capture_output=True, text=True, timeout=50,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        expected = "no such file" if problem == "missing" else "not a loadable ONNX model"
        assert "cameras -> cam1 -> lpr" in proc.stderr and expected in proc.stderr
        assert str(model) in proc.stderr
    assert not (tmp_path / "agent" / "agent.sqlite3").exists()  # nothing started


class SlowReader(PlateReader):
    """The real reader, then a pause: a box too slow for the frames it is given."""

    def read(self, frame: Image, skip: Any = None) -> FrameResult:
        result = super().read(frame, skip)
        time.sleep(0.4)
        return result


@pytest.mark.timeout(120)
async def test_reader_falling_behind_drops_frames_memory_bounded(
    camera: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lpr_camera, "PlateReader", SlowReader)
    cameras = {"cam1": lpr_camera_entry(camera.url, fps=15, queue_frames=3)}
    async with running_agent(tmp_path, cameras) as run:
        cam = await run.until("the LPR camera", lambda: run.agent.lpr.cameras.get("cam1"))
        longest = 0
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            longest = max(longest, len(cam.queue))
            await asyncio.sleep(0.05)
        status = cam.status()
    assert longest <= 3  # never more than queue_frames frames held
    assert status["frames_dropped"] > 0
    # every frame sampled was read, dropped, or is still queued (one may be in the reader)
    in_flight = status["frames_in"] - status["frames_read"] - status["frames_dropped"]
    assert 0 <= in_flight <= 3 + 1
    assert status["frames_read"] < status["frames_in"] / 2


def test_frame_queue_drops_oldest() -> None:
    queue = FrameQueue(2)
    frames = [cv2.UMat(1, 1, cv2.CV_8UC3).get() for _ in range(5)]
    for i, frame in enumerate(frames):
        queue.put(i, frame)
    assert len(queue) == 2 and queue.dropped == 3 and queue.put_count == 5
    assert [queue.get(0)[0], queue.get(0)[0]] == [3, 4]  # type: ignore[index]
    assert queue.get(0.01) is None
    waiter = threading.Thread(target=lambda: queue.get(30))
    waiter.start()
    queue.close()  # wakes a waiting reader
    waiter.join(5)
    assert not waiter.is_alive()


@pytest.mark.timeout(120)
def test_scene_video_one_read_per_passage(camera: Any) -> None:
    """The camera's scene file at 5 fps through reader and tracker with no suppression: every
    car of the truth exactly once, nothing else (the RTSP test above leans on the suppression
    window for the loop's repeats; this one does not)."""
    cv2.setNumThreads(1)
    reader = PlateReader(Recognizer.load(None))
    tracker = PlateTracker(suppress_ms=0)
    cap = cv2.VideoCapture(str(camera.video))
    fps = cap.get(cv2.CAP_PROP_FPS)
    step = round(fps / 5)
    passages = []
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % step == 0:
            passages += tracker.update(round(i * 1000 / fps), reader.read(frame).reads)
        i += 1
    passages += tracker.flush()
    assert sorted(p.plate for p in passages) == sorted(truth_plates(camera.truth))


def sampler_pids() -> set[int]:
    """Live LPR samplers (ffmpeg writing BMP frames to a pipe) that are our children."""
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        state, parent = stat[stat.rindex(")") + 2 :].split()[:2]
        if parent == me and state != "Z" and b"image2pipe" in cmdline:
            found.add(int(entry))
    return found


@pytest.mark.timeout(120)
async def test_lpr_follows_config_edits(camera: Any, tmp_path: Path) -> None:
    """Turning LPR off stops the sampler and the reader; a bad model in an edit is refused and
    the running config stays; turning it on again starts it."""
    cameras = {"cam1": lpr_camera_entry(camera.url)}
    async with running_agent(tmp_path, cameras) as run:
        await run.until(
            "frames read", lambda: run.agent.lpr.status().get("cam1", {}).get("frames_read", 0) > 3
        )
        assert len(sampler_pids()) == 1

        run.data["cameras"]["cam1"]["lpr"]["rec_model"] = str(tmp_path / "missing.onnx")
        run.save()
        await run.until("the bad edit refused", lambda: run.agent.last_reload_error)
        refused = run.agent.last_reload_error
        assert refused is not None and "no such file" in refused.message
        assert run.agent.lpr.status()["cam1"]["state"] == "running"

        run.data["cameras"]["cam1"]["lpr"] = {"enabled": False}
        run.save()
        await run.until("LPR stopped", lambda: "cam1" not in run.agent.lpr.status())
        await run.until("sampler gone", lambda: not sampler_pids())
        await run.recording("cam1")  # recording goes on

        run.data["cameras"]["cam1"]["lpr"] = {"enabled": True}
        run.save()
        await run.until(
            "LPR again",
            lambda: run.agent.lpr.status().get("cam1", {}).get("frames_read", 0) > 3,
        )
    assert not sampler_pids()
