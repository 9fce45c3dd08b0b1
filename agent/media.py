"""Segment files as media and as bytes on disk: probe, hash, fsync, and child processes that die
with the agent. Shared by the recorder (agent/segmenter.py) and start-up recovery
(agent/spool.py); docs/design/segments.md gives the steps these implement.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent import mp4

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class InvalidSegment(ValueError):
    """A closed segment that is not playable media; it is quarantined, never synced."""


@dataclass(frozen=True)
class ProbeResult:
    duration_ms: int
    codec: str


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    fn = ctypes.CDLL(None, use_errno=True).prctl
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    prctl: Callable[..., int] = fn
    return prctl


# Resolved once in the parent: the child between fork and exec only calls it.
_PRCTL = _prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when the agent dies.

    docs/design/segments.md step 0 and "Why PDEATHSIG": a ``kill -9`` of the agent must not leave
    an ffmpeg writing into the spool while the next agent reconciles it. The kernel delivers the
    signal when the *thread* that forked exits; asyncio forks on the event-loop thread, which
    lives as long as the agent. If the agent died between fork and prctl, the parent pid has
    already changed: exit instead of running unsupervised. None off Linux (no PDEATHSIG).
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        # Runs in the forked child before exec: no imports, no locks, no logging.
        if prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(127)

    return preexec


async def probe(path: Path) -> ProbeResult:
    """Media duration and codec from the MP4's boxes; raises InvalidSegment if unplayable.

    In-process (agent/mp4.py): an ``ffprobe`` per segment cost ~80 ms of CPU, mostly process
    start-up, which made recording several times dearer than ffmpeg itself (bench/recording.py).
    """
    try:
        info = await asyncio.to_thread(mp4.inspect, path)
    except mp4.Mp4Error as exc:
        raise InvalidSegment(str(exc)) from None
    except OSError as exc:
        raise InvalidSegment(f"unreadable: {exc.strerror}") from None
    if info.keyframes == 0:
        raise InvalidSegment("no keyframe: nothing in it can be decoded")
    if not info.starts_with_keyframe:
        # A camera may start a session mid-GOP: the frames before the first keyframe are
        # undecodable, the rest is good footage. Keep it.
        log.warning("segment %s does not start on a keyframe", path.name)
    return ProbeResult(info.duration_ms, info.codec)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (files created, renamed or removed in it) durable."""
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def hash_and_sync(path: Path) -> tuple[int, str]:
    """SHA-256 and size of a file, then fsync it and its directory. Blocks: run in a thread."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(fh.fileno())
    fsync_dir(path.parent)
    return size, digest.hexdigest()
