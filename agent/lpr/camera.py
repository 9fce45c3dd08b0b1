"""Plate recognition on one camera: frames sampled by ffmpeg, read off the event loop, one
read per vehicle passage stored with its evidence crop (docs/design/lpr.md).

Threads per LPR camera: *capture* runs ffmpeg (``-vf fps=N``, BMP frames on a pipe: every frame
is decoded, as H.264 requires, but only the sampled ones are converted and copied) and puts
frames in a bounded queue that drops its oldest frame when full (``dropped`` counts them);
*reader* takes frames, runs the ``PlateReader`` and the ``PlateTracker`` and hands finished
passages to the event loop, which writes the crop and stores the read (``Store.add_lpr_read``).
ffmpeg is restarted with backoff (1 s → 60 s) when the stream fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from agent.config import CameraConfig
from agent.lpr.models import ModelError, load_models
from agent.lpr.recognizer import Image, PlateCandidate, PlateReader
from agent.lpr.tracker import PlatePassage, PlateTracker
from agent.lpr.watchlist import WatchlistMatcher
from agent.store import LprRead, Store
from shared.messages import WatchlistAlert

log = logging.getLogger(__name__)

BACKOFF_S = (1.0, 60.0)
IDLE_POLL_S = 0.5  # the reader wakes this often without frames, so tracks still end
CROP_JPEG_QUALITY = 90


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class FrameQueue:
    """Bounded, thread-safe, drops the oldest frame when full: the reader always gets the
    newest frames and memory stays at ``maxlen`` frames."""

    def __init__(self, maxlen: int) -> None:
        self._items: deque[tuple[int, Image]] = deque()
        self._maxlen = maxlen
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0
        self.put_count = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, ts_ms: int, frame: Image) -> None:
        with self._cond:
            if len(self._items) >= self._maxlen:
                self._items.popleft()
                self.dropped += 1
            self._items.append((ts_ms, frame))
            self.put_count += 1
            self._cond.notify()

    def get(self, timeout_s: float) -> tuple[int, Image] | None:
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout_s)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def read_bmp(stream: IO[bytes]) -> Image | None:
    """The next BMP image of an ``image2pipe`` stream, or None at its end."""
    head = stream.read(14)
    if len(head) < 14:
        return None
    if head[:2] != b"BM":
        raise ValueError("not a BMP stream")
    size = int.from_bytes(head[2:6], "little")
    body = stream.read(size - 14)
    if len(body) < size - 14:
        return None
    img = cv2.imdecode(np.frombuffer(head + body, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("undecodable BMP frame")
    return np.asarray(img, np.uint8)


def sampler_command(url: str, fps: float, transport: str) -> list[str]:
    """ffmpeg sampling ``fps`` frames per second as BMP images on stdout."""
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
        "-rtsp_transport", transport, "-threads", "1", "-i", url,
        "-an", "-sn", "-dn", "-vf", f"fps={fps:g}",
        "-f", "image2pipe", "-c:v", "bmp", "-pix_fmt", "bgr24", "pipe:1",
    ]  # fmt: skip


class FrameSource:
    """ffmpeg on the camera's LPR stream, supervised with backoff; frames to a FrameQueue."""

    def __init__(self, key: str, camera: CameraConfig) -> None:
        self.key = key
        self.camera = camera
        self.last_error: str | None = None
        self.connected = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def run(self, queue: FrameQueue, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            cmd = sampler_command(
                self.camera.lpr_source_url(), self.camera.lpr.fps, self.camera.transport
            )
            started = time.monotonic()
            frames = 0
            with self._lock:
                if stop.is_set():
                    return
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
            proc = self._proc
            assert proc.stdout is not None and proc.stderr is not None
            try:
                while (frame := read_bmp(proc.stdout)) is not None:
                    self.connected = True
                    frames += 1
                    queue.put(_now_ms(), frame)
            except ValueError as exc:
                self.last_error = str(exc)
            finally:
                self.connected = False
                with self._lock:
                    proc.kill()
                    err = proc.stderr.read().decode(errors="replace").strip()
                    proc.wait()
                    self._proc = None
            if stop.is_set():
                return
            failures = 0 if frames and time.monotonic() - started > 30 else failures + 1
            self.last_error = err.splitlines()[-1] if err else "stream ended"
            delay = min(BACKOFF_S[0] * 2 ** (failures - 1), BACKOFF_S[1])
            log.warning(
                "lpr camera=%s: %s; reconnecting in %.0fs", self.key, self.last_error, delay
            )
            stop.wait(delay)

    def kill(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._proc.kill()


def crop_evidence(frame: Image, box: tuple[int, int, int, int]) -> bytes | None:
    """The plate with some of the car around it, as JPEG."""
    x, y, w, h = box
    dx, dy = w // 3, h * 2
    crop = frame[max(0, y - dy) : y + h + dy, max(0, x - dx) : x + w + dx]
    if crop.size == 0:
        return None
    ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, CROP_JPEG_QUALITY])
    return jpeg.tobytes() if ok else None


def evidence(frame: Image, read: PlateCandidate) -> bytes | None:
    return crop_evidence(frame, read.box)


CONTEXT_JPEG_QUALITY = 75


def context_evidence(frame: Image, width: int) -> bytes | None:
    """The whole frame, scaled down to ``width`` if wider, as JPEG (lpr.context_frame)."""
    h, w = frame.shape[:2]
    scaled = (
        cv2.resize(frame, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)
        if w > width
        else frame
    )
    ok, jpeg = cv2.imencode(".jpg", scaled, [cv2.IMWRITE_JPEG_QUALITY, CONTEXT_JPEG_QUALITY])
    return jpeg.tobytes() if ok else None


def write_crop(path: Path, data: bytes) -> str:
    """Write, fsync and rename into place; returns the SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(data).hexdigest()


def _start_thread(
    target: Callable[..., None], args: tuple[Any, ...], name: str, loop: asyncio.AbstractEventLoop
) -> asyncio.Event:
    """Run ``target`` on a new thread; the returned event is set (on ``loop``) when it ends."""
    ended = asyncio.Event()

    def body() -> None:
        try:
            target(*args)
        finally:
            loop.call_soon_threadsafe(ended.set)

    threading.Thread(target=body, name=name, daemon=True).start()
    return ended


class LprCamera:
    """Plate recognition on one camera until cancelled."""

    def __init__(
        self,
        key: str,
        camera: CameraConfig,
        store: Store,
        crops_dir: Path,
        matcher: WatchlistMatcher,
        agent_id: uuid.UUID,
    ) -> None:
        self.key = key
        self.camera = camera
        self.store = store
        self.crops_dir = crops_dir
        self.matcher = matcher
        self.agent_id = agent_id
        self.source = FrameSource(key, camera)
        self.queue = FrameQueue(camera.lpr.queue_frames)
        self.state = "starting"  # starting, running, error, stopped
        self.last_error: str | None = None
        self.frames_read = 0
        self.frame_errors = 0
        self.reads = 0
        self.alerts = 0
        self.frame_ms = 0.0  # last frame's reading time
        self.coasted = 0  # plate candidates a settled track took without reading them
        self._pending: set[Future[None]] = set()
        # A read waits this long for the segment holding its frame before it is sent unlinked.
        self.hold_ms = (2 * camera.record.segment_seconds + 10) * 1000

    def status(self) -> dict[str, object]:
        return {
            "state": self.state,
            "connected": self.source.connected,
            "frames_in": self.queue.put_count,
            "frames_read": self.frames_read,
            "frames_dropped": self.queue.dropped,
            "frame_errors": self.frame_errors,
            "plates_coasted": self.coasted,
            "reads": self.reads,
            "alerts": self.alerts,
            "last_frame_ms": round(self.frame_ms, 1),
            "error": self.last_error or self.source.last_error,
        }

    async def run(self) -> None:
        cfg = self.camera.lpr
        try:
            recognizer, detector = await asyncio.to_thread(load_models, cfg)
        except ModelError as exc:
            # Config validation loads the model too, so this is a file changed since: the
            # camera keeps recording; LPR says why it is off.
            self.state, self.last_error = "error", str(exc)
            log.error("lpr camera=%s: %s; plate recognition is off", self.key, exc)
            return
        reader = PlateReader(
            recognizer, detector, max_candidates=cfg.max_plates, min_confidence=cfg.min_confidence
        )
        tracker = PlateTracker(suppress_ms=cfg.suppress_seconds * 1000)
        self.queue = FrameQueue(cfg.queue_frames)
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        capture = _start_thread(
            self.source.run, (self.queue, stop), f"lpr-capture:{self.key}", loop
        )
        work = _start_thread(
            self._work, (reader, tracker, stop, loop), f"lpr-read:{self.key}", loop
        )
        self.state = "running"
        log.info("lpr camera=%s: reading plates at %g fps", self.key, cfg.fps)
        try:
            await asyncio.Event().wait()  # until cancelled; no executor thread is held
        finally:
            stop.set()
            self.source.kill()
            self.queue.close()
            await asyncio.shield(self._shutdown(capture, work, tracker))

    async def _shutdown(
        self, capture: asyncio.Event, work: asyncio.Event, tracker: PlateTracker
    ) -> None:
        await capture.wait()
        await work.wait()
        await self._persist(tracker.flush())  # passages still open end with the camera
        for fut in list(self._pending):
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(fut)
        self.state = "stopped"

    def _work(
        self,
        reader: PlateReader,
        tracker: PlateTracker,
        stop: threading.Event,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """The reader thread: frames → reads → passages → the event loop stores them."""
        cv2.setNumThreads(1)
        while not stop.is_set():
            item = self.queue.get(IDLE_POLL_S)
            if item is None:
                done = tracker.update(_now_ms(), [])  # tracks end without frames too
            else:
                ts_ms, frame = item
                started = time.perf_counter()
                try:
                    result = reader.read(frame, functools.partial(tracker.coast, ts_ms))
                except Exception as exc:  # one bad frame must not end the camera's LPR
                    self.frame_errors += 1
                    self.last_error = f"reading a frame failed: {type(exc).__name__}: {exc}"
                    log.exception("lpr camera=%s: reading a frame failed", self.key)
                    continue
                context = (
                    functools.partial(context_evidence, frame, self.camera.lpr.context_width)
                    if self.camera.lpr.context_frame
                    else None
                )
                done = tracker.update(
                    ts_ms, result.reads, functools.partial(evidence, frame), context
                )
                self.coasted = tracker.coasted
                self.frame_ms = (time.perf_counter() - started) * 1000
                self.frames_read += 1
            if done:
                fut = asyncio.run_coroutine_threadsafe(self._persist(done), loop)
                self._pending.add(fut)
                fut.add_done_callback(self._persisted)

    def _persisted(self, fut: Future[None]) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            self.last_error = f"storing a plate read failed: {fut.exception()}"
            log.error("lpr camera=%s: %s", self.key, self.last_error)

    async def _persist(self, passages: list[PlatePassage]) -> None:
        for p in passages:
            read_id = uuid.uuid4()
            crop_path = size = sha = None
            context_path = context_size = context_sha = None
            if p.crop_jpeg:
                path = self.crops_dir / self.key / f"{read_id}.jpg"
                sha = await asyncio.to_thread(write_crop, path, p.crop_jpeg)
                crop_path, size = str(path), len(p.crop_jpeg)
                if p.context_jpeg:  # only with its crop
                    path = self.crops_dir / self.key / f"{read_id}-context.jpg"
                    context_sha = await asyncio.to_thread(write_crop, path, p.context_jpeg)
                    context_path, context_size = str(path), len(p.context_jpeg)
            read = LprRead(
                read_id=read_id,
                camera_id=self.camera.id,
                plate=p.plate,
                confidence=min(1.0, max(0.0, p.confidence)),
                seen_ms=p.best_ms,
                first_ms=p.first_ms,
                last_ms=p.last_ms,
                box=p.box,
                crop_path=crop_path,
                crop_size_bytes=size,
                crop_sha256=sha,
                context_path=context_path,
                context_size_bytes=context_size,
                context_sha256=context_sha,
            )
            alerts = [
                WatchlistAlert(
                    alert_id=uuid.uuid4(),
                    agent_id=self.agent_id,
                    camera_id=self.camera.id,
                    read_id=read_id,
                    plate=p.plate,
                    listed_plate=m.entry.plate,
                    match=m.match,
                    watchlist_id=m.entry.watchlist_id,
                    confidence=read.confidence,
                    detected_ms=p.best_ms,
                )
                for m in self.matcher.match(p.plate)
            ]
            await self.store.add_lpr_read(read, alerts, self.hold_ms)
            self.reads += 1
            self.alerts += len(alerts)
            log.info(
                "lpr camera=%s: %s (%.2f, %d frames)%s",
                self.key, p.plate, p.confidence, p.hits,
                f", watchlist {', '.join(a.match for a in alerts)}" if alerts else "",
            )  # fmt: skip
