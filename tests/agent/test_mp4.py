"""In-process MP4 inspection against files made by ffmpeg's segment muxer, and broken ones."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agent.mp4 import Mp4Error, inspect
from devstack.scene import make_scene_video


def segment(tmp_path: Path, codec: str) -> list[Path]:
    scene = make_scene_video(tmp_path / "scene", seconds=6, width=640, height=360, codec=codec)
    out = tmp_path / codec
    out.mkdir()
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(scene.video), "-c", "copy", "-f", "segment",
         "-segment_time", "2", "-reset_timestamps", "1", "-segment_format", "mp4",
         str(out / "%03d.mp4")],
        check=True, timeout=60,
    )  # fmt: skip
    return sorted(out.glob("*.mp4"))


def ffprobe_duration_ms(path: Path) -> int:
    res = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return round(float(json.loads(res.stdout)["format"]["duration"]) * 1000)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_agrees_with_ffprobe(tmp_path: Path, codec: str) -> None:
    files = segment(tmp_path, codec)
    assert len(files) >= 3
    for path in files:
        info = inspect(path)
        assert info.codec == codec
        assert info.starts_with_keyframe
        assert info.samples > 0
        assert abs(info.duration_ms - ffprobe_duration_ms(path)) <= 1


@pytest.mark.timeout(120)
def test_truncated_and_garbage_files_are_refused(tmp_path: Path) -> None:
    good = segment(tmp_path, "h264")[0].read_bytes()
    bad = tmp_path / "bad.mp4"
    for cut in (0, 7, 40, len(good) // 2, len(good) - 1):
        bad.write_bytes(good[:cut])
        with pytest.raises(Mp4Error):
            inspect(bad)
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"garbage" * 100)
    with pytest.raises(Mp4Error):
        inspect(bad)
    bad.write_bytes(good + b"\x00\x01")  # trailing junk after the last box
    with pytest.raises(Mp4Error):
        inspect(bad)


@pytest.mark.timeout(120)
def test_segment_not_starting_on_a_keyframe_is_flagged(tmp_path: Path) -> None:
    data = bytearray(segment(tmp_path, "h264")[0].read_bytes())
    at = data.index(b"stss")
    # stss payload: version/flags (4), entry count (4), then the sample numbers.
    assert int.from_bytes(data[at + 12 : at + 16], "big") == 1
    data[at + 12 : at + 16] = (2).to_bytes(4, "big")
    patched = tmp_path / "patched.mp4"
    patched.write_bytes(bytes(data))
    assert not inspect(patched).starts_with_keyframe
