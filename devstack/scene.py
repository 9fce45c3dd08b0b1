"""Synthetic road-scene video with Brazilian licence plates and per-frame plate ground truth."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import cv2
import numpy as np
import numpy.typing as npt

# Bump when the drawing or the truth layout changes: cached videos of an older version are redone.
SCENE_VERSION = 4

Image = npt.NDArray[np.uint8]
PlateFormat = Literal["mercosul", "old"]
CODECS = ("h264", "h265")

_LETTERS = string.ascii_uppercase
_DIGITS = string.digits
_CITIES = ("SAO PAULO - SP", "CAMPINAS - SP", "CURITIBA - PR", "RECIFE - PE", "BELO HORIZONTE - MG")
_CAR_COLOURS_BGR = (
    (235, 235, 235),  # white
    (190, 190, 185),  # silver
    (40, 40, 40),  # black
    (110, 110, 110),  # grey
    (40, 40, 190),  # red
    (150, 80, 30),  # blue
    (60, 110, 60),  # green
    (80, 170, 215),  # beige
)
_MERCOSUL_BLUE_BGR = (153, 51, 0)
_OLD_GREY_BGR = (200, 200, 200)
_SUPERSAMPLE = 4  # plates are drawn this many times larger, then shrunk for anti-aliased glyphs


@dataclass(frozen=True)
class SceneVideo:
    """A generated scene: the video and its ground-truth JSON."""

    video: Path  # the .mp4
    truth: Path  # the .truth.json beside it


@dataclass
class _Vehicle:
    vehicle_id: int
    plate: str
    fmt: PlateFormat
    sprite: Image
    mask: Image
    plate_xy: tuple[int, int]  # plate's top-left inside the sprite
    plate_wh: tuple[int, int]
    y: int  # sprite top in the frame
    direction: int  # +1 left to right, -1 right to left
    spawn_frame: float  # frame at which the front bumper touches the entry edge
    speed: float  # px per frame
    first_frame: int = -1
    last_frame: int = -1
    boxes: list[list[int]] = field(default_factory=list)

    def left_x(self, frame: int, width: int) -> int:
        """Sprite's left edge in the frame at ``frame``."""
        travelled = self.speed * (frame - self.spawn_frame)
        length = int(self.sprite.shape[1])
        if self.direction > 0:
            return round(travelled - length)
        return round(width - travelled)


def random_plate(rng: random.Random, fmt: PlateFormat) -> str:
    """A canonical plate: Mercosul ``LLLNLNN`` or old ``LLLNNNN``."""
    letters = "".join(rng.choice(_LETTERS) for _ in range(3))
    if fmt == "mercosul":
        d1, letter, d2, d3 = (rng.choice(pool) for pool in (_DIGITS, _LETTERS, _DIGITS, _DIGITS))
        return f"{letters}{d1}{letter}{d2}{d3}"
    return letters + "".join(rng.choice(_DIGITS) for _ in range(4))


def _fit_text(text: str, font: int, max_w: float, max_h: float, thickness: int) -> float:
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, thickness)
    return min(max_w / tw, max_h / th)


def _put_centred(
    img: Image,
    text: str,
    centre: tuple[float, float],
    font: int,
    scale: float,
    colour: Any,
    thick: int,
) -> None:
    (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    org = (round(centre[0] - tw / 2), round(centre[1] + th / 2))
    cv2.putText(img, text, org, font, scale, colour, thick, cv2.LINE_AA)


def render_plate(
    plate: str,
    fmt: PlateFormat,
    width: int,
    height: int,
    rng: random.Random,
    *,
    font: int = cv2.FONT_HERSHEY_DUPLEX,
    weight: float = 0.06,
    ink: tuple[int, int, int] = (15, 15, 15),
) -> Image:
    """The plate as a BGR image of ``width`` x ``height`` pixels; ``font`` (an OpenCV Hershey
    font) and ``weight`` (stroke width as a share of the plate's height) vary the glyphs."""
    s = _SUPERSAMPLE
    w, h = width * s, height * s
    if fmt == "mercosul":
        img = np.full((h, w, 3), 255, np.uint8)
        band = round(h * 0.24)
        cv2.rectangle(img, (0, 0), (w, band), _MERCOSUL_BLUE_BGR, -1)
        small = _fit_text("BRASIL", cv2.FONT_HERSHEY_SIMPLEX, w * 0.3, band * 0.6, s)
        _put_centred(
            img, "BRASIL", (w / 2, band / 2), cv2.FONT_HERSHEY_SIMPLEX, small, (255,) * 3, s
        )
        # the little Brazilian flag on the right of the band
        fx0, fy0, fx1, fy1 = round(w * 0.86), round(band * 0.2), round(w * 0.95), round(band * 0.8)
        cv2.rectangle(img, (fx0, fy0), (fx1, fy1), (60, 150, 0), -1)
        mx, my = (fx0 + fx1) // 2, (fy0 + fy1) // 2
        dx, dy = (fx1 - fx0) // 2 - s, (fy1 - fy0) // 2 - s
        diamond = np.array([[mx - dx, my], [mx, my - dy], [mx + dx, my], [mx, my + dy]], np.int32)
        cv2.fillPoly(img, [diamond], (0, 215, 255))
        cv2.circle(img, (mx, my), max(1, dy // 2), (120, 40, 0), -1)
        text, top = plate, band
    else:
        img = np.full((h, w, 3), _OLD_GREY_BGR, np.uint8)
        band = round(h * 0.2)
        city = rng.choice(_CITIES)
        small = _fit_text(city, cv2.FONT_HERSHEY_SIMPLEX, w * 0.55, band * 0.6, s)
        _put_centred(img, city, (w / 2, band * 0.6), cv2.FONT_HERSHEY_SIMPLEX, small, (20,) * 3, s)
        text, top = f"{plate[:3]}-{plate[3:]}", band
    thick = max(2, round(h * weight))
    scale = _fit_text(text, font, w * 0.88, (h - top) * 0.62, thick)
    _put_centred(img, text, (w / 2, top + (h - top) * 0.5), font, scale, ink, thick)
    cv2.rectangle(img, (0, 0), (w - 1, h - 1), (30, 30, 30), 2 * s)
    small_img: Image = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA).astype(
        np.uint8
    )
    return small_img


def _render_car(
    rng: random.Random, scale: float, direction: int, plate_img: Image
) -> tuple[Image, Image, tuple[int, int]]:
    """Side-view car sprite (BGR + mask) with the plate on its rear; returns the plate offset."""
    length = round(rng.uniform(380, 460) * scale)
    body_h = round(rng.uniform(88, 100) * scale)
    cabin_h = round(rng.uniform(55, 70) * scale)
    wheel_r = round(32 * scale)
    height = cabin_h + body_h + wheel_r
    colour = rng.choice(_CAR_COLOURS_BGR)
    img = np.zeros((height, length, 3), np.uint8)
    mask = np.zeros((height, length), np.uint8)

    def both(draw: Any) -> None:
        draw(img, colour)
        draw(mask, 255)

    # Drawn facing right (front on the right); mirrored below for right-to-left traffic.
    body_top = cabin_h
    radius = round(18 * scale)
    x0, x1, y0, y1 = 0, length - 1, body_top, body_top + body_h
    both(lambda im, c: cv2.rectangle(im, (x0 + radius, y0), (x1 - radius, y1), c, -1))
    both(lambda im, c: cv2.rectangle(im, (x0, y0 + radius), (x1, y1 - radius), c, -1))
    for cx, cy in ((x0 + radius, y0 + radius), (x1 - radius, y0 + radius)):
        both(lambda im, c, cx=cx, cy=cy: cv2.circle(im, (cx, cy), radius, c, -1, cv2.LINE_AA))
    for cx, cy in ((x0 + radius, y1 - radius), (x1 - radius, y1 - radius)):
        both(lambda im, c, cx=cx, cy=cy: cv2.circle(im, (cx, cy), radius, c, -1, cv2.LINE_AA))
    cabin = np.array(
        [
            [round(length * 0.22), body_top + 1],
            [round(length * 0.32), 0],
            [round(length * 0.66), 0],
            [round(length * 0.80), body_top + 1],
        ],
        np.int32,
    )
    both(lambda im, c: cv2.fillPoly(im, [cabin], c, cv2.LINE_AA))
    glass = (95, 75, 55)
    pad = round(8 * scale)
    mid = round(length * 0.51)
    rear_win = np.array(
        [
            [round(length * 0.25) + pad, body_top],
            [round(length * 0.33) + pad // 2, pad],
            [mid - pad // 2, pad],
            [mid - pad // 2, body_top],
        ],
        np.int32,
    )
    front_win = np.array(
        [
            [mid + pad // 2, body_top],
            [mid + pad // 2, pad],
            [round(length * 0.65) - pad // 2, pad],
            [round(length * 0.77) - pad, body_top],
        ],
        np.int32,
    )
    cv2.fillPoly(img, [rear_win, front_win], glass, cv2.LINE_AA)
    shade = tuple(max(0, int(v) - 45) for v in colour)
    cv2.line(img, (x0 + radius, y0 + body_h // 2), (x1 - radius, y0 + body_h // 2), shade, 2)
    # lights: head on the front (right), tail on the rear (left)
    lw, lh = round(16 * scale), round(14 * scale)
    cv2.rectangle(img, (x1 - lw, y0 + lh), (x1 - 2, y0 + 2 * lh), (170, 240, 255), -1)
    cv2.rectangle(img, (x0 + 2, y0 + lh), (x0 + lw, y0 + 2 * lh), (30, 30, 200), -1)
    for wx in (round(length * 0.2), round(length * 0.8)):
        wy = y1 - round(wheel_r * 0.2)
        cv2.circle(img, (wx, wy), wheel_r, (25, 25, 25), -1, cv2.LINE_AA)
        cv2.circle(mask, (wx, wy), wheel_r, 255, -1, cv2.LINE_AA)
        cv2.circle(img, (wx, wy), round(wheel_r * 0.5), (150, 150, 150), -1, cv2.LINE_AA)
    if direction < 0:
        img = np.ascontiguousarray(img[:, ::-1])
        mask = np.ascontiguousarray(mask[:, ::-1])
    # The plate sits on the rear half of the body, after the mirror so its text reads correctly.
    ph, pw = plate_img.shape[:2]
    rear_x = round(length * 0.06)
    px = rear_x if direction > 0 else length - rear_x - pw
    # high on the body so the rear wheel arch does not cover it
    py = body_top + max(round(4 * scale), (body_h - round(1.25 * wheel_r) - ph) // 2)
    img[py : py + ph, px : px + pw] = plate_img
    mask[py : py + ph, px : px + pw] = 255
    mask = np.where(mask >= 128, 255, 0).astype(np.uint8)
    return img, mask, (px, py)


def _background(width: int, height: int, scale: float, rng: random.Random) -> Image:
    img = np.zeros((height, width, 3), np.uint8)
    sky_h = round(190 * scale)
    for y in range(sky_h):
        t = y / max(1, sky_h - 1)
        img[y, :] = (round(235 - 40 * t), round(200 - 20 * t), round(150 - 10 * t))
    # buildings on the skyline
    x = 0
    while x < width:
        bw = round(rng.uniform(60, 160) * scale)
        bh = round(rng.uniform(60, 170) * scale)
        tone = rng.randint(90, 170)
        cv2.rectangle(img, (x, sky_h - bh), (x + bw, sky_h), (tone, tone, tone + 10), -1)
        for wy in range(
            sky_h - bh + round(10 * scale), sky_h - round(12 * scale), round(22 * scale)
        ):
            for wx in range(x + round(8 * scale), x + bw - round(14 * scale), round(22 * scale)):
                cv2.rectangle(
                    img,
                    (wx, wy),
                    (wx + round(9 * scale), wy + round(11 * scale)),
                    (200, 220, 230),
                    -1,
                )
        x += bw + round(rng.uniform(0, 20) * scale)
    walk_top, road_top = sky_h, round(250 * scale)
    road_bottom = height - round(40 * scale)
    img[walk_top:road_top] = (150, 160, 165)
    img[road_bottom:] = (150, 160, 165)
    cv2.line(img, (0, road_top), (width, road_top), (90, 90, 90), max(1, round(4 * scale)))
    cv2.line(img, (0, road_bottom), (width, road_bottom), (90, 90, 90), max(1, round(4 * scale)))
    noise_rng = np.random.default_rng(rng.getrandbits(32))
    road = (
        noise_rng.normal(78, 6, (road_bottom - road_top - 2, width)).clip(0, 255).astype(np.uint8)
    )
    img[road_top + 2 : road_bottom] = cv2.cvtColor(
        cv2.GaussianBlur(road, (3, 3), 0), cv2.COLOR_GRAY2BGR
    )
    # dashed centre line between the two lanes
    mid_y = (road_top + road_bottom) // 2
    dash, gap = round(60 * scale), round(40 * scale)
    for dx in range(0, width, dash + gap):
        cv2.rectangle(
            img,
            (dx, mid_y - round(3 * scale)),
            (dx + dash, mid_y + round(3 * scale)),
            (235, 235, 235),
            -1,
        )
    return img


def _lane_rows(height: int, scale: float, car_h: int) -> list[int]:
    """Sprite top y of each lane (lane 0 left to right, lane 1 right to left)."""
    road_top, road_bottom = round(250 * scale), height - round(40 * scale)
    mid_y = (road_top + road_bottom) // 2
    return [mid_y - car_h - round(8 * scale), road_bottom - car_h - round(10 * scale)]


def _schedule(
    seed: int, n_frames: int, fps: int, width: int, height: int, scale: float
) -> list[_Vehicle]:
    vehicles: list[_Vehicle] = []
    gap = 60 * scale
    max_car_h = round((70 + 100 + 32) * scale)
    rows = _lane_rows(height, scale, max_car_h)
    for lane, direction in enumerate((1, -1)):
        # one generator per lane: a shorter scene is a prefix of a longer one with the same seed
        rng = random.Random(seed * 1009 + lane)
        prev: _Vehicle | None = None
        while True:
            fmt: PlateFormat = "mercosul" if rng.random() < 0.65 else "old"
            plate = random_plate(rng, fmt)
            pw = round(rng.uniform(135, 170) * scale)
            ph = round(pw / 3.08)
            sprite, mask, (px, py) = _render_car(
                rng, scale, direction, render_plate(plate, fmt, pw, ph, rng)
            )
            speed = rng.uniform(170, 330) * scale / fps  # px per frame
            if prev is None:
                # first car of the lane is already partly in view at frame 0
                spawn = -rng.uniform(0.25, 0.6) * width / speed - lane * 0.5 * fps
            else:
                prev_len = prev.sprite.shape[1]
                clear_entry = prev.spawn_frame + (prev_len + gap) / prev.speed
                prev_gone = prev.spawn_frame + (width + prev_len) / prev.speed
                no_catch_up = prev_gone - (width - gap) / speed
                spawn = max(clear_entry, no_catch_up) + rng.uniform(0.0, 2.5) * fps
            if spawn >= n_frames:
                break
            y = rows[lane] + (max_car_h - sprite.shape[0])
            vehicle = _Vehicle(
                vehicle_id=0,
                plate=plate,
                fmt=fmt,
                sprite=sprite,
                mask=mask,
                plate_xy=(px, py),
                plate_wh=(pw, ph),
                y=y,
                direction=direction,
                spawn_frame=spawn,
                speed=speed,
            )
            vehicles.append(vehicle)
            prev = vehicle
    vehicles.sort(key=lambda v: v.spawn_frame)
    for i, v in enumerate(vehicles, start=1):
        v.vehicle_id = i
    return vehicles


def _frames(
    n_frames: int, fps: int, width: int, height: int, seed: int, vehicles: Sequence[_Vehicle]
) -> Iterator[Image]:
    """Draws every frame, filling each vehicle's first/last frame and plate boxes on the way."""
    scale = height / 720
    background = _background(width, height, scale, random.Random(seed * 7919 + 1))
    frame = np.empty_like(background)
    font = cv2.FONT_HERSHEY_SIMPLEX
    ts_scale = 0.7 * scale
    ts_thick = max(1, round(2 * scale))
    t0 = 1_735_725_600  # 2025-01-01 10:00:00 UTC, a fixed clock so output is reproducible
    for i in range(n_frames):
        np.copyto(frame, background)
        for v in vehicles:
            x = v.left_x(i, width)
            sh, sw = v.sprite.shape[:2]
            if x >= width or x + sw <= 0:
                continue
            if v.first_frame < 0:
                v.first_frame = i
            v.last_frame = i
            a, b = max(0, -x), min(sw, width - x)
            dst = frame[v.y : v.y + sh, x + a : x + b]
            cv2.copyTo(v.sprite[:, a:b], v.mask[:, a:b], dst)
            px, py = x + v.plate_xy[0], v.y + v.plate_xy[1]
            pw, ph = v.plate_wh
            if px >= 0 and px + pw <= width and py >= 0 and py + ph <= height:
                v.boxes.append([i, px, py, pw, ph])
        secs = i / fps
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t0 + int(secs)))
        label = f"CAM1  {stamp}.{round((secs % 1) * 100) % 100:02d}  #{i:05d}"
        (tw, th), base = cv2.getTextSize(label, font, ts_scale, ts_thick)
        m = round(10 * scale)
        cv2.rectangle(frame, (m, m), (m + tw + 2 * m, m + th + base + m), (0, 0, 0), -1)
        org = (2 * m, m + th + m // 2)
        cv2.putText(frame, label, org, font, ts_scale, (255, 255, 255), ts_thick, cv2.LINE_AA)
        yield frame


def _encoder_options(codec: str, gop: int) -> tuple[str, dict[str, str]]:
    if codec == "h264":
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:open-gop=0:log-level=error"
        return "libx264", {
            "preset": "veryfast",
            "profile": "main",
            "crf": "23",
            "x264-params": params,
        }
    params = (
        f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:open-gop=0:repeat-headers=1"
        ":pools=2:frame-threads=1:log-level=error"
    )
    return "libx265", {"preset": "ultrafast", "profile": "main", "crf": "28", "x265-params": params}


def _encode_pyav(
    path: Path, codec: str, frames: Iterator[Image], fps: int, width: int, height: int, gop: int
) -> None:
    name, options = _encoder_options(codec, gop)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(name, rate=fps, options=options)
        assert isinstance(stream, av.VideoStream)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = 0
        # PyAV defaults to slice threading, which makes libx264 cut every frame in two slices;
        # ffmpeg's RTSP client then splits such IDR frames into two packets with one timestamp.
        stream.codec_context.thread_type = "FRAME"
        stream.codec_context.thread_count = 2
        if codec == "h265":
            stream.codec_context.codec_tag = "hvc1"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _encode_ffmpeg(
    path: Path, codec: str, frames: Iterator[Image], fps: int, width: int, height: int, gop: int
) -> None:
    """Fallback when the av wheel lacks the encoder: raw BGR frames piped to the system ffmpeg."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError(f"no {codec} encoder in PyAV and no ffmpeg binary on PATH")
    name, options = _encoder_options(codec, gop)
    opts = [arg for key, value in options.items() for arg in (f"-{key}", value)]
    cmd = [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", str(fps),
        "-i", "pipe:0",
        "-c:v", name, *opts, "-g", str(gop), "-bf", "0", "-pix_fmt", "yuv420p",
        *(["-tag:v", "hvc1"] if codec == "h265" else []),
        "-f", "mp4", str(path),
    ]  # fmt: skip
    # stderr to a file, not a pipe: nobody reads it while frames are written
    with tempfile.TemporaryFile() as errlog:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=errlog)
        assert proc.stdin is not None
        try:
            try:
                for image in frames:
                    proc.stdin.write(image.tobytes())
            except BrokenPipeError:
                pass  # ffmpeg died; its message is in errlog
            finally:
                proc.stdin.close()
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        errlog.seek(0)
        err = errlog.read()
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {codec} encode failed: {err.decode(errors='replace')[-500:]}")


def _has_pyav_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # any failure means "not usable"
        return False
    return True


def scene_stem(
    *, seconds: float, fps: int, width: int, height: int, seed: int, codec: str, gop_frames: int
) -> str:
    """File name (no suffix) that encodes every parameter of the scene."""
    stem = f"scene-{codec}-{width}x{height}-{fps}fps-{seconds:g}s-seed{seed}"
    return stem if gop_frames == 25 else f"{stem}-gop{gop_frames}"


def _cached(video: Path, truth: Path) -> bool:
    if not (video.is_file() and truth.is_file() and video.stat().st_size > 0):
        return False
    try:
        return bool(json.loads(truth.read_text()).get("scene_version") == SCENE_VERSION)
    except (OSError, ValueError):
        return False


def make_scene_video(
    out_dir: Path,
    *,
    seconds: float = 30.0,
    fps: int = 25,
    width: int = 1280,
    height: int = 720,
    seed: int = 7,
    codec: str = "h264",
    gop_frames: int = 25,
) -> SceneVideo:
    """Renders (or reuses) the scene video and its ground truth in ``out_dir``.

    The ground truth lists every vehicle whose plate is fully inside the frame on at least one
    frame; ``boxes`` holds ``[frame, x, y, w, h]`` of the plate on each such frame, and
    ``first_frame``/``last_frame`` bound the frames where any part of the vehicle is visible.
    """
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    if seconds <= 0 or fps <= 0 or gop_frames <= 0:
        raise ValueError("seconds, fps and gop_frames must be positive")
    if width % 2 or height % 2 or width < 320 or height < 240:
        raise ValueError(f"size must be even and at least 320x240, got {width}x{height}")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = scene_stem(
        seconds=seconds,
        fps=fps,
        width=width,
        height=height,
        seed=seed,
        codec=codec,
        gop_frames=gop_frames,
    )
    result = SceneVideo(video=out_dir / f"{stem}.mp4", truth=out_dir / f"{stem}.truth.json")
    if _cached(result.video, result.truth):
        return result

    n_frames = max(1, round(seconds * fps))
    scale = height / 720
    vehicles = _schedule(seed, n_frames, fps, width, height, scale)
    tag = f".tmp-{os.getpid()}"
    tmp_video = result.video.with_name(result.video.name + tag)
    tmp_truth = result.truth.with_name(result.truth.name + tag)
    try:
        frames = _frames(n_frames, fps, width, height, seed, vehicles)
        encoder = _encoder_options(codec, gop_frames)[0]
        encode = _encode_pyav if _has_pyav_encoder(encoder) else _encode_ffmpeg
        encode(tmp_video, codec, frames, fps, width, height, gop_frames)
        truth = {
            "scene_version": SCENE_VERSION,
            "fps": fps,
            "width": width,
            "height": height,
            "frames": n_frames,
            "codec": codec,
            "gop_frames": gop_frames,
            "seed": seed,
            "vehicles": [
                {
                    "vehicle_id": v.vehicle_id,
                    "plate": v.plate,
                    "format": v.fmt,
                    "first_frame": v.first_frame,
                    "last_frame": v.last_frame,
                    "boxes": v.boxes,
                }
                for v in vehicles
                if v.boxes
            ],
        }
        tmp_truth.write_text(json.dumps(truth, separators=(",", ":")) + "\n")
        os.replace(tmp_video, result.video)
        os.replace(tmp_truth, result.truth)
    finally:
        tmp_video.unlink(missing_ok=True)
        tmp_truth.unlink(missing_ok=True)
    return result


# --- Labelled scenes for the LPR benchmark (bench/lpr.py) -----------------------------------

_FONTS = (
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
)
# Text that is not a plate: shop fronts, street and traffic signs, car stickers.
_SIGNS = (
    "PADARIA", "FARMACIA", "PARE", "ESTACIONAMENTO", "VELOCIDADE 60", "AV PAULISTA",
    "ACOUGUE BOM PRECO", "ALUGA-SE", "TEL 3232-1234", "ONIBUS", "RUA 7 DE SETEMBRO",
    "HOTEL 2000", "BAR DO ZE", "KM 123", "SAIDA 45B", "PROIBIDO ESTACIONAR", "ESCOLA",
    "LOJA 24H", "CEP 01310-100", "OFICINA", "LAVA JATO", "DISK 0800 123", "TAXI", "CENTRO",
)  # fmt: skip


@dataclass(frozen=True)
class Conditions:
    """How one passage (or plate-free frame) is degraded."""

    font: int  # OpenCV Hershey font of the plate's glyphs
    weight: float  # glyph stroke width / plate height
    plate_width: int  # px at 720p (plates are 3.08 times as wide as high)
    tilt_deg: float  # camera roll
    skew: float  # horizontal shear, a stand-in for a camera looking from the side
    blur: float  # Gaussian sigma, px
    noise: float  # Gaussian noise sigma, grey levels
    night: bool  # dark scene, the plate lit by its lamp
    jpeg_quality: int
    signs: int  # distractor text boards in view

    def label(self) -> str:
        return "night" if self.night else "day"


@dataclass
class Passage:
    """One vehicle crossing the view: its plate and the frames an LPR camera would sample."""

    vehicle_id: int
    plate: str
    fmt: PlateFormat
    conditions: Conditions
    frames: list[Image]


def random_conditions(rng: random.Random) -> Conditions:
    return Conditions(
        font=rng.choice(_FONTS),
        weight=rng.uniform(0.045, 0.075),
        plate_width=round(rng.uniform(95, 200)),
        tilt_deg=rng.uniform(-6, 6),
        skew=rng.uniform(-0.15, 0.15),
        blur=rng.choice((0.0, 0.0, rng.uniform(0.5, 1.8))),
        noise=rng.uniform(0, 10),
        night=rng.random() < 0.25,
        jpeg_quality=rng.randint(35, 90),
        signs=rng.randint(0, 4),
    )


def _draw_signs(img: Image, rng: random.Random, count: int, scale: float) -> None:
    """Boards with text that is not a plate, on the buildings and the pavement."""
    w = img.shape[1]
    for _ in range(count):
        text = rng.choice(_SIGNS)
        font = rng.choice(_FONTS)
        fs = rng.uniform(0.5, 1.1) * scale
        thick = max(1, round(fs * 2))
        (tw, th), base = cv2.getTextSize(text, font, fs, thick)
        pad = round(8 * scale)
        x = rng.randint(0, max(0, w - tw - 2 * pad))
        y = rng.randint(round(40 * scale), max(round(41 * scale), round(240 * scale) - th))
        light = rng.random() < 0.5
        board = (
            (235, 235, 235) if light else rng.choice(((30, 90, 30), (40, 40, 160), (120, 60, 20)))
        )
        ink = (20, 20, 20) if light else (245, 245, 245)
        cv2.rectangle(img, (x, y), (x + tw + 2 * pad, y + th + base + 2 * pad), board, -1)
        org = (x + pad, y + pad + th)
        cv2.putText(img, text, org, font, fs, ink, thick, cv2.LINE_AA)


def _degrade(frame: Image, cond: Conditions, rng: random.Random, lit: Image | None) -> Image:
    """Night, camera roll and skew, blur, noise and JPEG, in that order. ``lit`` masks the
    pixels a plate lamp keeps visible at night."""
    h, w = frame.shape[:2]
    out: npt.NDArray[Any] = frame.astype(np.float32)
    if cond.night:
        dark = out * 0.22 + np.array([18, 8, 4], np.float32)
        if lit is not None:
            keep = (lit > 0)[..., None]
            dark = np.where(keep, out * 0.75, dark)
        out = dark
    m = cv2.getRotationMatrix2D((w / 2, h / 2), cond.tilt_deg, 1.0)
    m[0, 1] += cond.skew
    m[0, 2] -= cond.skew * h / 2
    out = cv2.warpAffine(out, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if cond.blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), cond.blur)
    if cond.noise > 0:
        noise_rng = np.random.default_rng(rng.getrandbits(32))
        out = out + noise_rng.normal(0, cond.noise, out.shape).astype(np.float32)
    img = out.clip(0, 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, cond.jpeg_quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return np.asarray(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), np.uint8)


def _scene_frame(
    background: Image, sprite: Image, mask: Image, x: int, y: int
) -> tuple[Image, Image]:
    """The background with a sprite pasted at (x, y), and the sprite's mask in frame pixels."""
    frame = background.copy()
    full = np.zeros(frame.shape[:2], np.uint8)
    w = frame.shape[1]
    sh, sw = sprite.shape[:2]
    a, b = max(0, -x), min(sw, w - x)
    if a < b:
        dst = frame[y : y + sh, x + a : x + b]
        cv2.copyTo(sprite[:, a:b], mask[:, a:b], dst)
        full[y : y + sh, x + a : x + b] = mask[:, a:b]
    return frame, full


def bench_passages(
    seed: int, count: int, *, frames: int = 5, width: int = 1280, height: int = 720
) -> Iterator[Passage]:
    """``count`` labelled passages, each a vehicle crossing a varied scene (fonts, sizes,
    angles, blur, noise, night, distractor text), both plate formats, ``frames`` frames each
    while its plate is in view. Deterministic for a seed."""
    rng = random.Random(seed)
    scale = height / 720
    for vehicle_id in range(1, count + 1):
        cond = random_conditions(rng)
        fmt: PlateFormat = "mercosul" if rng.random() < 0.6 else "old"
        plate = random_plate(rng, fmt)
        pw = round(cond.plate_width * scale)
        ph = round(pw / 3.08)
        plate_img = render_plate(plate, fmt, pw, ph, rng, font=cond.font, weight=cond.weight)
        direction = rng.choice((1, -1))
        sprite, mask, (px, py) = _render_car(rng, scale, direction, plate_img)
        background = _background(width, height, scale, random.Random(rng.getrandbits(32)))
        _draw_signs(background, rng, cond.signs, scale)
        max_car_h = round((70 + 100 + 32) * scale)
        row = rng.choice(_lane_rows(height, scale, max_car_h))
        y = row + (max_car_h - sprite.shape[0])
        # plate's left edge from 5 % to 95 % - its width of the frame
        lo, hi = round(width * 0.05), round(width * 0.95) - pw
        images = []
        for i in range(frames):
            plate_x = lo + (hi - lo) * (i + rng.uniform(0.1, 0.9)) / frames
            x = round(plate_x) - px
            frame, _ = _scene_frame(background, sprite, mask, x, y)
            lit = np.zeros(frame.shape[:2], np.uint8)
            cv2.rectangle(lit, (x + px, y + py), (x + px + pw, y + py + ph), 255, -1)
            images.append(_degrade(frame, cond, rng, lit))
        yield Passage(vehicle_id, plate, fmt, cond, images)


def bench_empty_frames(
    seed: int, count: int, *, width: int = 1280, height: int = 720
) -> Iterator[tuple[Conditions, Image]]:
    """Frames with no plate in view: the street, distractor text and cars whose plate holder
    is empty. Any read on them is a false read."""
    rng = random.Random(seed)
    scale = height / 720
    for _ in range(count):
        cond = random_conditions(rng)
        cond = Conditions(**{**cond.__dict__, "signs": rng.randint(2, 6)})
        background = _background(width, height, scale, random.Random(rng.getrandbits(32)))
        _draw_signs(background, rng, cond.signs, scale)
        frame = background
        max_car_h = round((70 + 100 + 32) * scale)
        for row in _lane_rows(height, scale, max_car_h)[: rng.randint(0, 2)]:
            pw = round(cond.plate_width * scale)
            holder = np.full((round(pw / 3.08), pw, 3), 45, np.uint8)
            sprite, mask, _ = _render_car(rng, scale, rng.choice((1, -1)), holder)
            x = rng.randint(-sprite.shape[1] // 3, width - 2 * sprite.shape[1] // 3)
            frame, _ = _scene_frame(frame, sprite, mask, x, row + max_car_h - sprite.shape[0])
        yield cond, _degrade(frame, cond, rng, None)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m devstack.scene --out DIR [...]`` prints the video and truth paths."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--codec", choices=CODECS, default="h264")
    parser.add_argument("--gop", type=int, default=25, help="keyframe interval in frames")
    args = parser.parse_args(argv)
    started = time.monotonic()
    scene = make_scene_video(
        args.out,
        seconds=args.seconds,
        fps=args.fps,
        width=args.width,
        height=args.height,
        seed=args.seed,
        codec=args.codec,
        gop_frames=args.gop,
    )
    print(scene.video)
    print(scene.truth)
    print(f"({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
