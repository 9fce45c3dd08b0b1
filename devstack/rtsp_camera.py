#!/usr/bin/python3
"""RTSP test camera: serves an MP4 in a loop without re-encoding (system python + GStreamer only).

Run with the Debian python, not the project venv (it needs python3-gi and gst-rtsp-server)::

    /usr/bin/python3 devstack/rtsp_camera.py --file scene.mp4 --port 8554 [--path cam1]
        [--codec h264|h265] [--user U --password W]

and it prints ``READY rtsp://127.0.0.1:PORT/PATH`` once it listens.

How it works: a *producer* pipeline (filesrc ! qtdemux ! parse ! appsink) reads the file, and
the appsink callback paces it in real time on the system clock, re-reading the file with
non-flushing segment seeks. Every loop is shifted to start right after the last frame of the
previous one, so timestamps only ever increase, evenly, across loop seams. Each access unit goes
to the appsrc of the current RTSP media, which is shared by all clients like a real camera; a
newly built media starts on a keyframe, and config-interval=-1 repeats SPS/PPS (and VPS) before
every keyframe for late joiners. Only stdlib and gi are imported: the project's own dependencies
are not installed for this interpreter.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstApp, GstRtsp, GstRtspServer  # noqa: E402

BIND_ADDRESS = "127.0.0.1"
MAX_SERVER_THREADS = 16
_CODECS = {
    # codec: (parser, payloader, caps the producer hands over)
    "h264": ("h264parse", "rtph264pay", "video/x-h264,stream-format=avc,alignment=au"),
    "h265": ("h265parse", "rtph265pay", "video/x-h265,alignment=au"),
}
_COPY_ALL = (
    Gst.BufferCopyFlags.FLAGS
    | Gst.BufferCopyFlags.TIMESTAMPS
    | Gst.BufferCopyFlags.META
    | Gst.BufferCopyFlags.MEMORY
)


def log(msg: str) -> None:
    print(f"rtsp_camera: {msg}", file=sys.stderr, flush=True)


class _Target:
    """One media's appsrc and the state of the feed into it."""

    def __init__(self, appsrc: GstApp.AppSrc) -> None:
        self.appsrc = appsrc
        self.started = False

    def push(self, buf: Gst.Buffer, shift: int, keyframe: bool) -> bool:
        """Pushes one access unit, ``shift`` ns later than its file time on the clock.

        Returns False once the media is gone (flushing / EOS).
        """
        if not self.started:
            # wait for a keyframe and for the media to run, so its base time is meaningful
            if not keyframe or self.appsrc.get_state(0)[1] != Gst.State.PLAYING:
                return True
            self.started = True
        offset = shift - self.appsrc.get_base_time()  # clock time -> the media's running time
        out = buf.copy_region(_COPY_ALL, 0, buf.get_size())  # Buffer.copy() is only a new ref
        out.pts = buf.pts + offset
        out.dts = (buf.dts if buf.dts != Gst.CLOCK_TIME_NONE else buf.pts) + offset
        if out.dts < 0:
            return True
        return bool(self.appsrc.push_buffer(out) == Gst.FlowReturn.OK)


class LoopingSource:
    """Plays the file in real time forever and fans its access units out to the attached medias.

    Pacing and timestamps are computed here, not by the pipeline: each access unit is due at
    ``t0 + shift + dts`` on the system clock, and at every loop seam ``shift`` grows by the time
    the previous loop took (last dts + last duration), so time never goes back nor repeats. The
    file itself is re-read with non-flushing segment seeks, so the demuxer does not restart.
    """

    MAX_LAG_NS = Gst.SECOND  # further behind than this (machine stalled): skip ahead instead

    def __init__(self, path: str, codec: str, on_fatal: Any) -> None:
        parser, _, caps = _CODECS[codec]
        self.pipeline = Gst.parse_launch(
            f"filesrc name=file ! qtdemux ! {parser} ! "
            f'appsink name=sink sync=false max-buffers=1 enable-last-sample=false caps="{caps}"'
        )
        self.pipeline.get_by_name("file").set_property("location", path)
        self.sink = self.pipeline.get_by_name("sink")
        self.sink.set_property("emit-signals", True)
        self.sink.connect("new-sample", self._on_sample)
        self.clock = Gst.SystemClock.obtain()
        self.caps: Gst.Caps | None = None
        self.loops = 0
        self._targets: list[_Target] = []
        self._lock = threading.Lock()
        self._on_fatal = on_fatal
        self._stopping = threading.Event()
        self._shift: int | None = None  # clock time of dts 0 in the current loop
        self._last_dts = -1
        self._last_end = 0  # dts + duration of the last access unit, in file time
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self._on_message)

    def start(self) -> None:
        self.pipeline.set_state(Gst.State.PAUSED)
        ret, _, _ = self.pipeline.get_state(10 * Gst.SECOND)
        if ret == Gst.StateChangeReturn.FAILURE:
            msg = self.pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
            detail = msg.parse_error()[0].message if msg is not None else "unknown error"
            raise RuntimeError(f"cannot play it ({detail}); is it an MP4 of the --codec given?")
        self.caps = self.sink.get_static_pad("sink").get_current_caps()
        if self.caps is None:
            raise RuntimeError("no video stream of the expected codec in the file")
        # A segment seek ends with SEGMENT_DONE instead of EOS, and the next non-flushing
        # segment seek restarts the file without tearing the demuxer down.
        flags = Gst.SeekFlags.FLUSH | Gst.SeekFlags.SEGMENT
        if not self.pipeline.seek(
            1.0, Gst.Format.TIME, flags, Gst.SeekType.SET, 0, Gst.SeekType.NONE, -1
        ):
            raise RuntimeError("the file is not seekable, cannot loop it")
        self.pipeline.set_state(Gst.State.PLAYING)

    def stop(self) -> None:
        self._stopping.set()
        self.pipeline.set_state(Gst.State.NULL)

    def attach(self, appsrc: GstApp.AppSrc) -> _Target:
        target = _Target(appsrc)
        with self._lock:
            self._targets.append(target)
        return target

    def detach(self, target: _Target) -> None:
        with self._lock:
            if target in self._targets:
                self._targets.remove(target)

    def _on_sample(self, sink: GstApp.AppSink) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.OK
        buf = sample.get_buffer()
        dts = buf.dts if buf.dts != Gst.CLOCK_TIME_NONE else buf.pts
        duration = buf.duration if buf.duration != Gst.CLOCK_TIME_NONE else 0
        now = self.clock.get_time()
        if self._shift is None:
            self._shift = now - dts
        elif dts <= self._last_dts:  # the file started over: continue right after the last unit
            self._shift += self._last_end - dts
        self._last_dts, self._last_end = dts, dts + duration
        due = self._shift + dts
        if now - due > self.MAX_LAG_NS:
            log(f"{(now - due) / Gst.SECOND:.1f} s behind, skipping ahead")
            self._shift += now - due
            due = now
        elif due > now and self._stopping.wait((due - now) / Gst.SECOND):
            return Gst.FlowReturn.FLUSHING
        keyframe = not buf.has_flags(Gst.BufferFlags.DELTA_UNIT)
        with self._lock:
            targets = list(self._targets)
        for target in targets:
            if not target.push(buf, self._shift, keyframe):
                self.detach(target)
        return Gst.FlowReturn.OK

    def _on_message(self, _bus: Gst.Bus, msg: Gst.Message) -> None:
        if msg.type == Gst.MessageType.SEGMENT_DONE:
            self.loops += 1
            self.pipeline.seek(
                1.0,
                Gst.Format.TIME,
                Gst.SeekFlags.SEGMENT,
                Gst.SeekType.SET,
                0,
                Gst.SeekType.NONE,
                -1,
            )
        elif msg.type == Gst.MessageType.EOS:  # not expected with segment seeks; restart anyway
            log("unexpected EOS, restarting the file")
            self.loops += 1
            self.pipeline.seek(
                1.0,
                Gst.Format.TIME,
                Gst.SeekFlags.FLUSH | Gst.SeekFlags.SEGMENT,
                Gst.SeekType.SET,
                0,
                Gst.SeekType.NONE,
                -1,
            )
        elif msg.type == Gst.MessageType.ERROR:
            err, debug = msg.parse_error()
            log(f"producer error: {err.message} ({debug})")
            self._on_fatal()


def build_server(args: argparse.Namespace, source: LoopingSource) -> GstRtspServer.RTSPServer:
    parser, payloader, _ = _CODECS[args.codec]
    server = GstRtspServer.RTSPServer()
    server.set_address(BIND_ADDRESS)
    server.set_service(str(args.port))
    # Default pool is one thread: clients connecting while another one is being set up stall.
    server.get_thread_pool().set_max_threads(MAX_SERVER_THREADS)

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( appsrc name=src is-live=true format=time do-timestamp=false min-latency=0 "
        "max-bytes=8000000 leaky-type=downstream "
        f"! {parser} ! {payloader} name=pay0 pt=96 config-interval=-1 )"
    )
    factory.set_shared(True)  # one pipeline for every client, like a real camera

    def on_media_configure(_factory: Any, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", source.caps)
        target = source.attach(appsrc)
        media.connect("unprepared", lambda _media: source.detach(target))

    factory.connect("media-configure", on_media_configure)

    if args.user is not None:
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        auth = GstRtspServer.RTSPAuth()
        auth.set_realm("GT-Vision test camera")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        auth.add_digest(args.user, args.password, token)
        # PyGObject takes one enum value here, not a mask: challenge with Digest (what cameras
        # do); a client sending Basic credentials up front is accepted too.
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        server.set_auth(auth)  # no default token: anonymous requests get 401
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("viewer", "media.factory.access", True)
        permissions.add_permission_for_role("viewer", "media.factory.construct", True)
        factory.set_permissions(permissions)

    server.get_mount_points().add_factory(f"/{args.path}", factory)
    return server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Serve an MP4 over RTSP in a loop, without re-encoding."
    )
    ap.add_argument("--file", required=True, help="H.264/H.265 MP4 without B-frames")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="cam1", help="mount point, without the leading slash")
    ap.add_argument("--codec", choices=sorted(_CODECS), default="h264")
    ap.add_argument("--user")
    ap.add_argument("--password")
    args = ap.parse_args(argv)
    if (args.user is None) != (args.password is None):
        ap.error("--user and --password go together")
    args.path = args.path.strip("/")
    if not args.path:
        ap.error("--path must not be empty")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Gst.init(None)
    loop = GLib.MainLoop()
    status = {"code": 0}

    def fatal() -> None:
        status["code"] = 1
        loop.quit()

    def on_signal(signum: int) -> bool:
        log(f"signal {signum}, stopping")
        loop.quit()
        return GLib.SOURCE_REMOVE

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, on_signal, signum)

    source = LoopingSource(args.file, args.codec, fatal)
    try:
        source.start()
    except RuntimeError as exc:
        log(f"{args.file}: {exc}")
        source.stop()
        return 2
    server = build_server(args, source)
    if server.attach(None) == 0:
        log(f"cannot listen on {BIND_ADDRESS}:{args.port} (port in use?)")
        source.stop()
        return 2
    print(f"READY rtsp://{BIND_ADDRESS}:{args.port}/{args.path}", flush=True)
    try:
        loop.run()
    finally:
        source.stop()
    log(f"stopped after {source.loops} loop(s) of the file")
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
