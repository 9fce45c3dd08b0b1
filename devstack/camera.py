"""Simulated RTSP camera: starts ``rtsp_camera.py`` under the system python and waits for it."""

from __future__ import annotations

import functools
import os
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

SYSTEM_PYTHON = "/usr/bin/python3"
CAMERA_SCRIPT = Path(__file__).with_name("rtsp_camera.py")
CODECS = ("h264", "h265")
APT_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-bad"
)
_GI_CHECK = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
    "missing = [e for e in ('qtdemux', 'h264parse', 'h265parse', 'rtph264pay', 'rtph265pay', "
    "'appsrc', 'appsink') if Gst.ElementFactory.find(e) is None]; "
    "print(' '.join(missing))"
)
# The venv's variables must not leak into the system interpreter.
_DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")


def _system_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _DROP_ENV}


@functools.cache
def check_system_gstreamer() -> None:
    """Raises RuntimeError naming the apt packages when the system python cannot run the camera."""
    hint = f"install them with: apt-get install -y {APT_PACKAGES}"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        raise RuntimeError(f"{SYSTEM_PYTHON} not found; the RTSP camera needs it: {hint}")
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-c", _GI_CHECK],
        capture_output=True,
        text=True,
        timeout=60,
        env=_system_env(),
        check=False,
    )
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{SYSTEM_PYTHON} cannot import gi/GstRtspServer ({detail[0]}); {hint}")
    if missing := proc.stdout.strip():
        raise RuntimeError(f"GStreamer elements missing: {missing}; {hint}")


def rtsp_url(
    port: int, path: str = "cam1", user: str | None = None, password: str | None = None
) -> str:
    """``rtsp://[user:password@]127.0.0.1:port/path`` with the credentials percent-encoded."""
    auth = ""
    if user is not None:
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        auth += "@"
    return f"rtsp://{auth}127.0.0.1:{port}/{path.strip('/')}"


def camera_command(
    video: Path,
    port: int,
    *,
    path: str = "cam1",
    codec: str = "h264",
    user: str | None = None,
    password: str | None = None,
) -> list[str]:
    """The command line of the camera process (system python, unbuffered output)."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    if (user is None) != (password is None):
        raise ValueError("user and password go together")
    cmd = [
        SYSTEM_PYTHON, "-u", str(CAMERA_SCRIPT),
        "--file", str(video), "--port", str(port), "--path", path, "--codec", codec,
    ]  # fmt: skip
    if user is not None and password is not None:
        cmd += ["--user", user, "--password", password]
    return cmd


def start_camera(
    video: Path,
    port: int,
    log: Path,
    *,
    path: str = "cam1",
    codec: str = "h264",
    user: str | None = None,
    password: str | None = None,
) -> subprocess.Popen[bytes]:
    """Starts the camera with stdout and stderr appended to ``log``; the caller owns the process.

    Stop it with ``terminate()`` then ``wait()``: it quits cleanly on SIGTERM.
    """
    check_system_gstreamer()
    if not video.is_file():
        raise FileNotFoundError(video)
    cmd = camera_command(video, port, path=path, codec=codec, user=user, password=password)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_system_env()
        )


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.hostname}:{parts.port}"))


def _tail(path: Path | None, lines: int = 20) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_camera_ready(
    url: str,
    timeout_s: float = 20.0,
    *,
    log: Path | None = None,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Polls with ffprobe over RTSP/TCP until ``url`` answers with a video stream.

    Raises TimeoutError (with ffprobe's last error and the tail of ``log``) when it does not
    within ``timeout_s``, or RuntimeError as soon as ``process`` has exited.
    """
    deadline = time.monotonic() + timeout_s
    shown = _redact(url)
    last_error = "no attempt made"
    cmd = [
        "ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-timeout", "5000000",
        "-select_streams", "v:0", "-show_entries", "stream=codec_type", "-of", "csv=p=0", url,
    ]  # fmt: skip
    while True:
        if process is not None and process.poll() is not None:
            code = process.returncode
            raise RuntimeError(f"camera exited ({code}) before serving {shown}\n{_tail(log)}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=max(1.0, remaining), check=False
            )
        except subprocess.TimeoutExpired:
            last_error = "ffprobe timed out"
        else:
            if proc.returncode == 0 and "video" in proc.stdout:
                return
            last_error = (proc.stderr.strip() or proc.stdout.strip() or "no video stream")[-500:]
        time.sleep(min(0.3, max(0.0, deadline - time.monotonic())))
    raise TimeoutError(
        f"camera not ready at {shown} after {timeout_s:.0f} s: {last_error}\n{_tail(log)}".rstrip()
    )
