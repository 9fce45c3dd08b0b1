"""In-process MP4 inspection: duration, codec and a keyframe start, from the box structure.

Validating a closed segment with an ``ffprobe`` process costs ~80 ms of CPU per segment, mostly
process start-up (bench/recording.py); walking the boxes costs well under a millisecond. Only the
box headers and the ``moov`` box (a few KB) are read, never the media data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CODECS = {b"avc1": "h264", b"avc3": "h264", b"hvc1": "h265", b"hev1": "h265"}
MAX_MOOV_BYTES = 64 * 1024 * 1024  # far above any segment's; refuses absurd sizes


class Mp4Error(ValueError):
    """Not a complete, playable MP4 of a supported video codec; the message says what is wrong."""


@dataclass(frozen=True)
class Mp4Info:
    duration_ms: int
    codec: str  # "h264" or "h265"
    samples: int
    keyframes: int
    starts_with_keyframe: bool


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    out = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise Mp4Error(f"truncated 64-bit box header for {kind!r}")
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise Mp4Error(f"box {kind!r} overruns its parent ({size} bytes at {pos})")
        out.append((kind, pos + header, pos + size))
        pos += size
    if pos != end:
        raise Mp4Error(f"{end - pos} stray bytes after the last box")
    return out


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int]:
    for k, s, e in _boxes(data, start, end):
        if k == kind:
            return s, e
    raise Mp4Error(f"missing {kind.decode(errors='replace')} box")


def _top_level(fh: BinaryIO, file_size: int) -> dict[bytes, tuple[int, int]]:
    """Offsets of the top-level boxes, reading only their headers."""
    found: dict[bytes, tuple[int, int]] = {}
    pos = 0
    while pos < file_size:
        fh.seek(pos)
        header = fh.read(16)
        if len(header) < 8:
            raise Mp4Error(f"truncated box header at {pos}")
        size, kind = struct.unpack_from(">I4s", header)
        head = 8
        if size == 1:
            if len(header) < 16:
                raise Mp4Error(f"truncated 64-bit box header at {pos}")
            size, head = struct.unpack_from(">Q", header, 8)[0], 16
        elif size == 0:
            size = file_size - pos
        if size < head or pos + size > file_size:
            raise Mp4Error(f"box {kind!r} at {pos} runs past the end of the file (truncated)")
        found.setdefault(kind, (pos + head, pos + size))
        pos += size
    return found


def _video_track(moov: bytes) -> tuple[bytes, int, int]:
    """(whole moov, mdia start, mdia end) of the first video track."""
    for kind, start, end in _boxes(moov):
        if kind != b"trak":
            continue
        mdia = _child(moov, start, end, b"mdia")
        hs, _ = _child(moov, *mdia, b"hdlr")
        if moov[hs + 8 : hs + 12] == b"vide":
            return moov, *mdia
    raise Mp4Error("no video track")


def inspect(path: Path) -> Mp4Info:
    """Duration, codec and keyframe start of an MP4 file; raises Mp4Error if it is not sound."""
    with path.open("rb") as fh:
        file_size = fh.seek(0, 2)
        top = _top_level(fh, file_size)
        if b"ftyp" not in top:
            raise Mp4Error("no ftyp box: not an MP4 file")
        if b"mdat" not in top:
            raise Mp4Error("no mdat box: no media data")
        if b"moov" not in top:
            raise Mp4Error("no moov box: the file was not closed (truncated)")
        start, end = top[b"moov"]
        if end - start > MAX_MOOV_BYTES:
            raise Mp4Error(f"moov box of {end - start} bytes")
        fh.seek(start)
        moov = fh.read(end - start)
    data, ms, me = _video_track(moov)

    # The movie header's duration is the presentation length (after edit lists), which is
    # what players and ffprobe report; the media header's can differ on a stream's first
    # segment, where an edit list skips packets that arrived without timestamps.
    hs, _ = _child(data, 0, len(data), b"mvhd")
    if data[hs] == 1:
        timescale, duration = struct.unpack_from(">IQ", data, hs + 20)
    else:
        timescale, duration = struct.unpack_from(">II", data, hs + 12)
    if timescale == 0 or duration == 0:
        raise Mp4Error("movie has no duration")

    minf = _child(data, ms, me, b"minf")
    stbl_s, stbl_e = _child(data, *minf, b"stbl")
    stsd_s, _ = _child(data, stbl_s, stbl_e, b"stsd")
    entries = struct.unpack_from(">I", data, stsd_s + 4)[0]
    if entries < 1:
        raise Mp4Error("no sample description")
    fourcc = data[stsd_s + 12 : stsd_s + 16]
    codec = CODECS.get(fourcc)
    if codec is None:
        raise Mp4Error(f"unsupported video codec {fourcc.decode(errors='replace')!r}")

    stsz_s, _ = _child(data, stbl_s, stbl_e, b"stsz")
    samples = struct.unpack_from(">I", data, stsz_s + 8)[0]
    if samples == 0:
        raise Mp4Error("no video samples")
    # No stss box means every sample is a sync sample.
    keyframes, keyframe_start = samples, True
    for kind, s, _e in _boxes(data, stbl_s, stbl_e):
        if kind == b"stss":
            keyframes = struct.unpack_from(">I", data, s + 4)[0]
            keyframe_start = keyframes > 0 and struct.unpack_from(">I", data, s + 8)[0] == 1
    return Mp4Info(round(duration * 1000 / timescale), codec, samples, keyframes, keyframe_start)
