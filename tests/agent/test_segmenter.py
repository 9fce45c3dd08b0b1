"""The recorder against a real RTSP camera and ffmpeg: segments, statuses, quarantine, backoff."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import ClockState, read_clock_state
from agent.config import CameraConfig
from agent.segmenter import CameraRecorder, backoff_delays, probe
from agent.store import Segment, Store
from devstack.camera import rtsp_url, start_camera, wait_camera_ready
from devstack.procs import free_port
from devstack.scene import make_scene_video


def camera_config(url: str, **extra: Any) -> CameraConfig:
    return CameraConfig.model_validate(
        {"id": uuid.uuid4(), "name": "t", "url": url, "record": {"segment_seconds": 2}} | extra
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "agent.sqlite3")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def auth_camera(camera: Any, tmp_path: Path) -> Iterator[tuple[int, str, str]]:
    """A second camera that demands Digest credentials."""
    port, user, password = free_port(), "operador", "s3nh@-secreta"
    proc = start_camera(camera.video, port, tmp_path / "cam.log", user=user, password=password)
    try:
        wait_camera_ready(rtsp_url(port, user=user, password=password), log=tmp_path / "cam.log")
        yield port, user, password
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except Exception:
            proc.kill()
            proc.wait()


async def record_for(recorder: CameraRecorder, seconds: float) -> None:
    task = asyncio.create_task(recorder.run_once())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.mark.timeout(90)
async def test_records_valid_abutting_segments(camera: Any, store: Store, tmp_path: Path) -> None:
    cam = camera_config(camera.url)
    recorder = CameraRecorder("cam", cam, store, tmp_path / "spool")
    await record_for(recorder, 9)
    assert recorder.segments_registered >= 2
    rows = await store.pending()
    segments = [await store.segment(r.ref_id) for r in rows]
    assert all(s is not None for s in segments)
    assert len({s.run_id for s in segments if s}) == 1
    for seg in segments:
        assert seg is not None and seg.path.exists()
        info = await probe(seg.path)
        assert info.codec == "h264" and info.duration_ms == seg.duration_ms
        assert len(seg.sha256) == 64 and seg.size_bytes == seg.path.stat().st_size
    ordered = sorted((s for s in segments if s), key=lambda s: s.seq)
    for a, b in itertools.pairwise(ordered):
        assert abs(a.start_ms + a.duration_ms - b.start_ms) < 100, "segments of a run abut"


@pytest.mark.timeout(60)
async def test_wrong_path_and_dead_port_give_clear_status(
    camera: Any, store: Store, tmp_path: Path
) -> None:
    wrong_path = camera.url.rsplit("/", 1)[0] + "/nao-existe"
    recorder = CameraRecorder("cam", camera_config(wrong_path), store, tmp_path)
    assert await recorder.run_once() == 0
    assert recorder.status == "error"
    assert "not found" in recorder.reason

    dead = CameraRecorder(
        "cam", camera_config(f"rtsp://127.0.0.1:{free_port()}/x"), store, tmp_path
    )
    assert await dead.run_once() == 0
    assert (dead.status, dead.reason) == ("error", "camera unreachable")
    assert await store.pending() == []


@pytest.mark.timeout(60)
async def test_wrong_credentials_reported_without_leaking_them(
    auth_camera: tuple[int, str, str],
    store: Store,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, user, _ = auth_camera
    caplog.set_level(logging.DEBUG)
    cam = camera_config(rtsp_url(port), username=user, password="senha-errada-123")
    recorder = CameraRecorder("cam", cam, store, tmp_path)
    assert await recorder.run_once() == 0
    assert (recorder.status, recorder.reason) == ("error", "authentication failed")
    assert "senha-errada-123" not in caplog.text + recorder.reason


@pytest.mark.timeout(60)
async def test_right_credentials_record(
    auth_camera: tuple[int, str, str], store: Store, tmp_path: Path
) -> None:
    port, user, password = auth_camera
    cam = camera_config(rtsp_url(port), username=user, password=password)
    recorder = CameraRecorder("cam", cam, store, tmp_path)
    await record_for(recorder, 6)
    assert recorder.segments_registered >= 1
    assert recorder.status == "online"


@pytest.mark.timeout(60)
async def test_corrupt_segment_is_quarantined_not_registered(store: Store, tmp_path: Path) -> None:
    recorder = CameraRecorder("cam", camera_config("rtsp://127.0.0.1/x"), store, tmp_path)
    bad = tmp_path / "cam" / "run" / "000000.mp4"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"garbage" * 100)
    assert not await recorder._close_segment(uuid.uuid4(), bad, 0, 1_700_000_000_000, 0)
    assert not bad.exists()
    assert len(list((tmp_path / "quarantine" / "cam").iterdir())) == 1
    assert await store.pending() == []
    # A camera whose segments are all refused is not "online": the status says why.
    assert recorder.status == "error" and recorder.reason.startswith("segments refused")


def test_backoff_schedule_doubles_to_a_cap() -> None:
    assert backoff_delays() == [1, 2, 4, 8, 16, 32, 60]


@pytest.mark.timeout(60)
async def test_unreachable_camera_is_not_a_busy_loop(store: Store, tmp_path: Path) -> None:
    recorder = CameraRecorder(
        "cam", camera_config(f"rtsp://127.0.0.1:{free_port()}/x"), store, tmp_path
    )
    attempts = 0
    original = recorder.run_once

    async def counting() -> int:
        nonlocal attempts
        attempts += 1
        return await original()

    recorder.run_once = counting  # type: ignore[method-assign]
    task = asyncio.create_task(recorder.run())
    await asyncio.sleep(4)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # Backoff 1 s, 2 s, ... (with ±20 % jitter): at most 3 attempts fit in 4 s.
    assert 1 <= attempts <= 3, attempts


class OwnCamera:
    """A camera this test may kill, freeze and restart on the same port."""

    def __init__(self, video: Path, log: Path, codec: str = "h264") -> None:
        self.video, self.log, self.codec, self.port = video, log, codec, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_camera(self.video, self.port, self.log, codec=self.codec)
        wait_camera_ready(rtsp_url(self.port), log=self.log)

    def stop(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)  # in case a test froze it
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


async def until(check: Any, timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(120)
async def test_reconnects_after_the_camera_dies_and_returns(
    camera: Any, store: Store, tmp_path: Path
) -> None:
    cam = OwnCamera(camera.video, tmp_path / "cam.log")
    cam.start()
    recorder = CameraRecorder("cam", camera_config(rtsp_url(cam.port)), store, tmp_path / "s")
    task = asyncio.create_task(recorder.run())
    try:
        await until(lambda: recorder.segments_registered >= 1, 30, "a first segment")
        cam.stop()
        await until(lambda: recorder.status != "online", 30, "the camera to be seen gone")
        assert recorder.reason, "a human reason for the outage"
        before = recorder.segments_registered
        await asyncio.sleep(3)  # the camera stays away across a few reconnect attempts
        cam.start()
        await until(lambda: recorder.segments_registered > before, 60, "recording again")
        assert recorder.status == "online"
        assert len(await store.runs()) >= 2, "a new run (RTSP session) after the outage"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        cam.stop()


@pytest.mark.timeout(120)
async def test_stalled_stream_is_detected_and_restarted(
    camera: Any, store: Store, tmp_path: Path
) -> None:
    cam = OwnCamera(camera.video, tmp_path / "cam.log")
    cam.start()
    config = camera_config(rtsp_url(cam.port), record={"segment_seconds": 2, "stall_seconds": 4})
    recorder = CameraRecorder("cam", config, store, tmp_path / "s")
    task = asyncio.create_task(recorder.run())
    try:
        await until(lambda: recorder.segments_registered >= 1, 30, "a first segment")
        assert cam.proc is not None
        os.kill(cam.proc.pid, signal.SIGSTOP)  # connected, but no more video
        await until(lambda: recorder.reason.startswith("stalled"), 20, "the stall")
        os.kill(cam.proc.pid, signal.SIGCONT)
        before = recorder.segments_registered
        await until(lambda: recorder.segments_registered > before, 60, "recording again")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        cam.stop()


@pytest.mark.timeout(120)
async def test_h265_camera_records_without_transcoding(store: Store, tmp_path: Path) -> None:
    scene = make_scene_video(tmp_path / "scene", seconds=6, width=640, height=360, codec="h265")
    cam = OwnCamera(scene.video, tmp_path / "cam.log", codec="h265")
    cam.start()
    recorder = CameraRecorder("cam", camera_config(rtsp_url(cam.port)), store, tmp_path / "s")
    try:
        await record_for(recorder, 7)
    finally:
        cam.stop()
    rows = [await store.segment(r.ref_id) for r in await store.pending()]
    assert rows and all(seg is not None and seg.codec == "h265" for seg in rows)


async def segments_in_order(store: Store) -> list[Segment]:
    found = [await store.segment(r.ref_id) for r in await store.pending()]
    return sorted((s for s in found if s), key=lambda s: (s.run_id.int, s.seq))


def test_clock_state_is_read_from_the_kernel() -> None:
    state = read_clock_state()
    assert state.sync in ("synced", "unsynced")  # Linux answers adjtimex(2) without privilege
    assert state.error_ms is not None and state.error_ms >= 0


@pytest.mark.timeout(120)
async def test_wall_clock_steps_never_overlap_or_shift_a_run(
    camera: Any, store: Store, tmp_path: Path
) -> None:
    """A clock stepped back between runs cannot overlap earlier video; a step during a run does
    not move that run's segments (they are placed by media time)."""
    step_ms = 0

    def clock() -> int:
        return time.time_ns() // 1_000_000 - step_ms

    recorder = CameraRecorder(
        "cam", camera_config(camera.url), store, tmp_path / "spool",
        clock_ms=clock, clock_state=lambda: ClockState("synced", 12, 0),
    )  # fmt: skip
    await record_for(recorder, 7)
    first = await segments_in_order(store)
    step_ms = 3_600_000  # an hour back, e.g. NTP correcting a clock that ran ahead
    before = recorder.segments_registered
    task = asyncio.create_task(recorder.run_once())
    await until(lambda: recorder.segments_registered > before, 30, "the second run's segment")
    step_ms = -3_600_000  # then two hours forward in the middle of the run
    await asyncio.sleep(6)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    second = [s for s in await segments_in_order(store) if s not in first]
    assert len({s.run_id for s in first}) == 1 and len({s.run_id for s in second}) == 1
    assert len(first) >= 2 and len(second) >= 2
    assert all(s.duration_ms > 0 for s in first + second)
    assert all(s.shifted_ms == 0 for s in first)
    end_of_first = first[-1].start_ms + first[-1].duration_ms
    assert second[0].start_ms >= end_of_first, "the stepped-back run overlaps earlier video"
    assert all(s.shifted_ms > 3_500_000 for s in second), "the move is recorded"
    for a, b in itertools.pairwise(second):
        assert abs(a.start_ms + a.duration_ms - b.start_ms) < 100, "a step inside a run moved it"
    assert {(s.clock_sync, s.clock_error_ms) for s in first + second} == {("synced", 12)}
