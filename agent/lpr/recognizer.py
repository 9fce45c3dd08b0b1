"""Plate reading on one frame: glyph lines found by OpenCV morphology (or plate boxes from a
configured YOLO detector), levelled, checked for a plate's shape, read by a CTC recogniser
(PP-OCRv6 by default) or a slot reader, and corrected to a Brazilian format.

Per frame: grey image (shrunk to at most ``MAX_FRAME_SIDE``) → black-hat (dark glyphs on a
light plate) → horizontal gradient → closing into text-line blobs → each blob levelled by its
own angle (up to ``MAX_TILT_DEG``) → kept if glyph-high blobs fill a line about seven glyphs
long over light plate background → the strongest ``max_candidates`` cropped from the full-size
frame and read in one batch, each squeezed to ``REC_SQUEEZE`` of its width (cost grows with
width) → per-character probabilities turned into a plate by ``shared.plates``, the plate's
colours (Mercosul's blue band) deciding look-alikes in the fifth position.

With a detector (``lpr.det_model``) its boxes replace the search over the whole frame: the
glyph line is searched only inside each box (with a margin), and a box where none is found is
read as it is. A slot reader reads the whole plate box, as it was trained to.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.lpr.models import (
    SLOT_PAD,
    Box,
    Detector,
    FloatArray,
    PlateModel,
    Recognizer,
    SlotReader,
)
from shared.plates import PlateFormat, plate_from_alternatives

Image = npt.NDArray[np.uint8]
Array = npt.NDArray[Any]  # what OpenCV hands back

MAX_FRAME_SIDE = 1280  # candidates are searched on a frame shrunk to this
REC_MAX_WIDTH = 320  # a text line wider than this (at the model's height) is squeezed
# Lines are narrowed to this share of their width before reading: the reader's cost grows with
# the width, and plate glyphs are wide enough to lose a little (bench.lpr measures both).
REC_SQUEEZE = 0.55
PLATE_ASPECT = (2.0, 10.0)  # width / height of the glyph line's box
MIN_GLYPH_HEIGHT = 8  # px in the shrunk frame
MAX_TILT_DEG = 20.0  # glyph lines tilted more than this are not searched
# A detector's box is widened by these shares of its width and height on each side before the
# glyph line is searched in it (the search looks beside and below the glyphs)...
DET_SEARCH_MARGIN = (0.2, 0.3)
# ...and by these when the box itself is read (a detector's box may clip the plate's edge).
DET_READ_MARGIN = (0.03, 0.06)
# Characters the reader may emit; punctuation is allowed so that the dash of ``ABC-1234`` does not
# turn into a glyph, and dropped afterwards.
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_KEEP = _ALNUM + "-.:· "


@dataclass(frozen=True)
class PlateCandidate:
    """A plate read on one frame. ``box`` is (x, y, w, h) in the frame's pixels."""

    plate: str
    confidence: float
    box: tuple[int, int, int, int]
    raw: str
    style: PlateFormat | None  # from the plate's colours, when they tell


@dataclass
class FrameResult:
    reads: list[PlateCandidate] = field(default_factory=list)
    candidates: int = 0
    skipped: int = 0  # candidates not read (``skip``)


@dataclass(frozen=True)
class LineCandidate:
    """A glyph line found on a frame, levelled: ``crop`` is what the reader reads, ``band``
    the strip above it (Mercosul's blue band is there), ``box`` its axis-aligned box on the
    frame."""

    score: float
    box: tuple[int, int, int, int]
    crop: Image
    band: Image


def _tighten(mask: Array) -> tuple[int, int, int, int] | None:
    """The glyph line in a blob's mask: its longest band of well-filled rows, then the columns
    filled in that band (drops borders, trims and lights merged into the blob)."""
    cols_on = np.flatnonzero(mask.any(axis=0))
    if cols_on.size == 0:
        return None
    c0 = int(cols_on[0])
    mask = mask[:, c0 : int(cols_on[-1]) + 1]
    rows = (mask > 0).mean(axis=1) > 0.5
    best, run_start, best_run = (0, 0), -1, 0
    for i, full in enumerate([*rows.tolist(), False]):
        if full and run_start < 0:
            run_start = i
        elif not full and run_start >= 0:
            if i - run_start > best_run:
                best, best_run = (run_start, i), i - run_start
            run_start = -1
    if best_run < MIN_GLYPH_HEIGHT:
        return None
    cols = np.flatnonzero((mask[best[0] : best[1]] > 0).mean(axis=0) > 0.5)
    if cols.size == 0:
        return None
    return c0 + int(cols[0]), best[0], int(cols[-1] - cols[0] + 1), best_run


def glyph_line(grey: Array, box: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """The glyphs' own box around a text-line blob when it looks like a plate's: dark blobs of
    a glyph's height filling a line about seven glyphs long, and light, even plate background
    just below them (a row of building windows or a grille has neither); None otherwise."""
    x, y, w, h = box
    y0 = max(0, y - h // 2)
    region = grey[y0 : y + h + h // 2, x : x + w]
    if region.size == 0:
        return None
    _, binary = cv2.threshold(region, 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    n, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    tops, bottoms, lefts, rights, widths = [], [], [], [], []
    for i in range(1, n):
        cx, cy, cw, ch = (int(v) for v in stats[i, :4])
        # Glyph-high blobs that stay inside the line's neighbourhood (a window frame or the car
        # body runs off it); blur may have merged neighbouring glyphs, so any width will do.
        if 0.6 * h <= ch <= 1.7 * h and cw <= 0.9 * w and cy > 0 and cy + ch < region.shape[0]:
            tops.append(cy)
            bottoms.append(cy + ch)
            lefts.append(cx)
            rights.append(cx + cw)
            widths.append(cw)
    if not tops:
        return None
    # about seven glyphs, each roughly 0.4 to 0.8 glyph heights wide
    glyph_h = float(np.median(np.array(bottoms) - np.array(tops)))
    if not 4 <= sum(widths) / (0.6 * glyph_h) <= 14 or sum(widths) < 0.4 * w:
        return None
    top, bottom = int(np.median(tops)), int(np.median(bottoms))
    gh = bottom - top
    if gh < MIN_GLYPH_HEIGHT:
        return None
    line = region[top:bottom]
    below = region[bottom + max(1, gh // 10) : bottom + max(2, gh // 4), w // 8 : w - w // 8]
    if below.size == 0 or line.size == 0:
        return None
    paper = float(np.percentile(line, 90))
    ink = float(np.percentile(line, 10))
    contrast = paper - ink + 1
    if float(below.mean()) < ink + 0.45 * contrast or float(below.std()) > 0.35 * contrast:
        return None
    left, right = min(lefts), max(rights)
    glyphs = (x + left, y0 + top, right - left, gh)
    if _text_continues(grey, glyphs, (ink + paper) / 2):
        return None
    return glyphs


def _text_continues(grey: Array, glyphs: tuple[int, int, int, int], level: float) -> bool:
    """More glyphs of the same height in line just left or right of ``glyphs``: a longer text
    (a sign's "HOTEL 2000" is not the plate TEL2000). A plate's frame is thin and runs past
    the glyphs' top and bottom, so it does not count."""
    x, y, w, h = glyphs
    y0, y1 = max(0, y - h // 4), min(grey.shape[0], y + h + h // 4)
    reach = round(1.2 * h)
    for x0, x1 in (
        (max(0, x - reach), max(0, x - 1)),
        (x + w + 1, min(grey.shape[1], x + w + reach)),
    ):
        if x1 - x0 < h // 3:
            continue
        ink = (grey[y0:y1, x0:x1] < level).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
        for i in range(1, n):
            cy, cw, ch = (int(v) for v in stats[i, 1:4])
            inside = cy > 0 and cy + ch < y1 - y0
            if inside and 0.6 * h <= ch <= 1.3 * h and 0.15 * h <= cw <= 1.2 * h:
                return True
    return False


def _level(image: Array, centre: tuple[float, float], angle: float, size: tuple[int, int]) -> Array:
    """The ``size`` (w, h) patch of ``image`` centred on ``centre``, rotated by ``angle``
    degrees so that a line at that angle becomes horizontal (a plain slice when level and
    inside the image)."""
    x0, y0 = round(centre[0] - size[0] / 2), round(centre[1] - size[1] / 2)
    inside = (
        x0 >= 0 and y0 >= 0 and x0 + size[0] <= image.shape[1] and y0 + size[1] <= image.shape[0]
    )
    if abs(angle) <= 1.0 and inside:
        return image[y0 : y0 + size[1], x0 : x0 + size[0]]
    m = cv2.getRotationMatrix2D(centre, angle, 1.0)
    m[0, 2] += size[0] / 2 - centre[0]
    m[1, 2] += size[1] / 2 - centre[1]
    return cv2.warpAffine(image, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _blobs(grey: Array) -> tuple[list[Array], Array]:
    """Contours of dark-glyph text-line blobs, and the gradient image they came from."""
    found: list[Array] = []
    grads: list[Array] = []
    for kw, kh in ((17, 7), (31, 13)):
        blackhat = cv2.morphologyEx(
            grey, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (kw, kh))
        )
        grad = np.abs(cv2.Sobel(blackhat, cv2.CV_32F, 1, 0, ksize=3))
        grad = cv2.GaussianBlur(grad, (5, 5), 0)
        grads.append(grad)
        closed = cv2.morphologyEx(
            grad, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (kw + 4, 3))
        )
        peak = float(closed.max())
        if peak <= 0:
            continue
        norm = (closed * (255.0 / peak)).astype(np.uint8)
        _, mask = cv2.threshold(norm, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        # thin lines (trims, borders, window frames) are not glyph lines
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((7, 5), np.uint8))
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        found += contours
    return found, np.maximum(grads[0], grads[1])


def find_candidates(frame: Image, limit: int) -> list[LineCandidate]:
    """Levelled glyph lines (dark glyphs on a light plate, tilted up to ``MAX_TILT_DEG``) that
    hold several glyph-sized blobs, best first, at most ``limit``."""
    h0, w0 = frame.shape[:2]
    scale = min(1.0, MAX_FRAME_SIDE / max(h0, w0))
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    if scale < 1.0:
        grey = cv2.resize(
            grey, (round(w0 * scale), round(h0 * scale)), interpolation=cv2.INTER_AREA
        )
    contours, grad = _blobs(grey)
    found: list[tuple[float, tuple[float, float], float, tuple[int, int, int, int], int, int]] = []
    for contour in contours:
        x, y, w, h = (int(v) for v in cv2.boundingRect(contour))
        if h < MIN_GLYPH_HEIGHT or w < 3 * MIN_GLYPH_HEIGHT:
            continue
        mu = cv2.moments(contour)
        if mu["m00"] <= 0:
            continue
        angle = math.degrees(0.5 * math.atan2(2 * mu["mu11"], mu["mu20"] - mu["mu02"]))
        if abs(angle) > MAX_TILT_DEG:
            continue
        # Cheap shape checks first (most blobs end here): the blob's own rotated box must be
        # long and high enough for a glyph line, and the blob must fill a fair part of it.
        (_, _), (rw, rh), _ = cv2.minAreaRect(contour)
        long_side, short_side = max(rw, rh), min(rw, rh)
        if short_side < 0.8 * MIN_GLYPH_HEIGHT or long_side < PLATE_ASPECT[0] * short_side:
            continue
        if mu["m00"] < 0.3 * long_side * short_side:
            continue
        centre = (mu["m10"] / mu["m00"], mu["m01"] / mu["m00"])
        # a patch wide enough for the levelled line, tall enough for the band above it
        pw = round(w * 1.1 + 3 * h) + 8  # room for _text_continues on both sides
        ph = round(h + w * math.sin(math.radians(abs(angle)))) * 3 + 8
        local = np.zeros((ph, pw), np.uint8)
        shifted = contour - np.array([[round(centre[0] - pw / 2), round(centre[1] - ph / 2)]])
        cv2.drawContours(local, [shifted.astype(np.int32)], -1, 255, -1)
        if abs(angle) > 1.0:
            local = _level(local, (pw / 2, ph / 2), angle, (pw, ph))
        tight = _tighten(local)
        if tight is None:
            continue
        tx, ty, tw, th = tight
        if not PLATE_ASPECT[0] <= tw / th <= PLATE_ASPECT[1]:
            continue
        patch = _level(grey, centre, angle, (pw, ph))
        glyphs = glyph_line(patch, tight)
        if glyphs is None:
            continue
        strength = float(grad[y : y + h, x : x + w].mean())
        found.append((strength, centre, angle, glyphs, pw, ph))
    found.sort(key=lambda item: -item[0])
    out: list[LineCandidate] = []
    for strength, centre, angle, (tx, ty, tw, th), pw, ph in found:
        # back to the full-size frame
        c = (centre[0] / scale, centre[1] / scale)
        size = (round(pw / scale), round(ph / scale))
        tx, ty, tw, th = (round(v / scale) for v in (tx, ty, tw, th))
        half_w, half_h = tw / 2, th / 2
        box = (
            max(0, round(c[0] - half_w - 2)),
            max(0, round(c[1] - half_h - tw * abs(math.sin(math.radians(angle))) / 2 - 2)),
            round(tw + 4),
            round(th + tw * abs(math.sin(math.radians(angle))) + 4),
        )
        if any(iou(box, o.box) > 0.3 for o in out):
            continue
        patch = _level(frame, c, angle, size)
        dx, dy = round(tw * 0.06), round(th * 0.18)
        crop = patch[max(0, ty - dy) : ty + th + dy, max(0, tx - dx) : tx + tw + dx]
        band = patch[
            max(0, ty - round(th * 1.5)) : max(0, ty - 1), tx + tw // 10 : tx + tw - tw // 10
        ]
        out.append(LineCandidate(strength, box, np.ascontiguousarray(crop), band))
        if len(out) >= limit:
            break
    return out


def _widen(box: Box, margin: tuple[float, float], shape: tuple[int, ...]) -> Box:
    """``box`` grown by ``margin`` (shares of its width, height) on each side, inside a frame
    of ``shape``."""
    x, y, w, h = box
    mx, my = round(w * margin[0]), round(h * margin[1])
    x0, y0 = max(0, x - mx), max(0, y - my)
    x1, y1 = min(shape[1], x + w + mx), min(shape[0], y + h + my)
    return x0, y0, x1 - x0, y1 - y0


def detected_candidates(
    frame: Image, boxes: list[tuple[Box, float]], whole: bool = False
) -> list[LineCandidate]:
    """A candidate per detector box, in the boxes' order: the levelled glyph line found inside
    the box when there is one (``find_candidates`` on the box and its surroundings), else the
    box itself; with ``whole``, always the box itself (a slot reader reads whole plates), the
    glyph line only telling the plate's colours."""
    out: list[LineCandidate] = []
    for box, score in boxes:
        sx, sy, sw, sh = _widen(box, DET_SEARCH_MARGIN, frame.shape)
        lines = find_candidates(np.ascontiguousarray(frame[sy : sy + sh, sx : sx + sw]), 1)
        band: Image = lines[0].band if lines else np.zeros((0, 0, 3), np.uint8)
        if lines and not whole:
            crop = lines[0].crop
        else:
            rx, ry, rw, rh = _widen(box, DET_READ_MARGIN, frame.shape)
            crop = np.ascontiguousarray(frame[ry : ry + rh, rx : rx + rw])
        out.append(LineCandidate(score, box, crop, band))
    return out


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union else 0.0


def plate_style(above: Image) -> PlateFormat | None:
    """Mercosul plates carry a blue band above the glyphs; the old ones are grey with the city's
    name there. ``above`` is the strip above the glyph line, up to one and a half glyph
    heights: walking up from the glyphs past the plate's background, the first rows that differ
    are the blue band (Mercosul) or something else (old format); None when unclear."""
    if above.shape[0] < 4 or above.shape[1] < 8:
        return None
    hsv = cv2.cvtColor(above, cv2.COLOR_BGR2HSV)
    h, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    blue_rows = ((h >= 95) & (h <= 130) & (sat >= 70) & (val >= 35)).mean(axis=1)
    paper = float(np.percentile(val[-2:], 80))
    plain_rows = ((val >= 0.75 * paper) & (sat < 60)).mean(axis=1) > 0.85
    rows = above.shape[0]
    i = rows - 1
    while i >= 0 and plain_rows[i]:
        i -= 1
    if i < 0:
        return None
    if blue_rows[max(0, i - 2) : i + 1].mean() >= 0.5:
        return "mercosul"
    if rows - 1 - i >= 2 and blue_rows.max() < 0.1:
        return "old"
    return None


class PlateReader:
    """Reads plates on frames. Not thread-safe: one per worker thread."""

    def __init__(
        self,
        recognizer: PlateModel,
        detector: Detector | None = None,
        *,
        max_candidates: int = 6,
        min_confidence: float = 0.6,
    ) -> None:
        self.rec = recognizer
        self.det = detector
        self.max_candidates = max_candidates
        self.min_confidence = min_confidence
        if isinstance(recognizer, Recognizer):
            chars = recognizer.characters
            self._keep = np.array([i for i, c in enumerate(chars) if i == 0 or c in _KEEP])
            self._keep_chars = [chars[i] for i in self._keep]
            self._alnum_cols = {c: j for j, c in enumerate(self._keep_chars) if c in _ALNUM and c}
        else:
            self._alnum_cols = {c: j for j, c in enumerate(recognizer.alphabet) if c in _ALNUM}

    def candidates(self, frame: Image) -> list[LineCandidate]:
        """What is read on a frame: the detector's boxes when there is one, else glyph lines."""
        if self.det is None:
            return find_candidates(frame, self.max_candidates)
        boxes = self.det.detect(frame, self.max_candidates)
        return detected_candidates(frame, boxes, whole=isinstance(self.rec, SlotReader))

    def read(
        self, frame: Image, skip: Callable[[tuple[int, int, int, int]], bool] | None = None
    ) -> FrameResult:
        """The plates on a frame. ``skip`` may spare candidates from being read (the tracker
        already knows what they say: ``PlateTracker.coast``)."""
        lines = self.candidates(frame)
        result = FrameResult(candidates=len(lines))
        if skip is not None:
            lines = [line for line in lines if not skip(line.box)]
            result.skipped = result.candidates - len(lines)
        if not lines:
            return result
        texts = self._recognise([line.crop for line in lines])
        seen: set[str] = set()
        for line, (raw, positions) in zip(lines, texts, strict=True):
            style = plate_style(line.band)
            chosen = plate_from_alternatives(positions, style)
            if chosen is None:
                continue
            plate, confidence = chosen
            if confidence < self.min_confidence or plate in seen:
                continue
            seen.add(plate)
            result.reads.append(PlateCandidate(plate, confidence, line.box, raw, style))
        return result

    def _recognise(self, crops: list[Image]) -> list[tuple[str, list[dict[str, float]]]]:
        """Each crop's raw text and, per emitted character, its alphanumeric alternatives."""
        if isinstance(self.rec, SlotReader):
            return self._read_slots(self.rec, crops)
        height = self.rec.height
        widths = [
            min(
                REC_MAX_WIDTH,
                max(height, math.ceil(REC_SQUEEZE * height * c.shape[1] / max(1, c.shape[0]))),
            )
            for c in crops
        ]
        batch = np.zeros((len(crops), 3, height, max(widths)), np.float32)
        for i, (crop, width) in enumerate(zip(crops, widths, strict=True)):
            img = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
            batch[i, :, :, :width] = ((img / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
        probs = self.rec.run(batch)[:, :, self._keep]
        return [self._decode(p) for p in probs]

    def _decode(self, probs: FloatArray) -> tuple[str, list[dict[str, float]]]:
        best = probs.argmax(axis=1)
        raw: list[str] = []
        positions: list[dict[str, float]] = []
        prev = 0
        for t, idx in enumerate(best):
            if idx != 0 and idx != prev:
                ch = self._keep_chars[idx]
                raw.append(ch)
                if ch in self._alnum_cols:
                    row = probs[t]
                    positions.append({c: float(row[j]) for c, j in self._alnum_cols.items()})
            prev = int(idx)
        return "".join(raw), positions

    def _read_slots(
        self, rec: SlotReader, crops: list[Image]
    ) -> list[tuple[str, list[dict[str, float]]]]:
        """A slot reader's reads: each crop resized to its input (grey or RGB, uint8), each
        slot's best character, pad slots dropped."""
        batch = np.zeros((len(crops), rec.height, rec.width, rec.channels), np.uint8)
        for i, crop in enumerate(crops):
            img = cv2.resize(crop, (rec.width, rec.height), interpolation=cv2.INTER_LINEAR)
            code = cv2.COLOR_BGR2GRAY if rec.channels == 1 else cv2.COLOR_BGR2RGB
            batch[i] = cv2.cvtColor(img, code).reshape(rec.height, rec.width, rec.channels)
        texts = []
        for probs in rec.run(batch):
            raw: list[str] = []
            positions: list[dict[str, float]] = []
            for row in probs:
                ch = rec.alphabet[int(row.argmax())]
                if ch == SLOT_PAD:
                    continue
                raw.append(ch)
                if ch in self._alnum_cols:
                    positions.append({c: float(row[j]) for c, j in self._alnum_cols.items()})
            texts.append(("".join(raw), positions))
        return texts


def make_batch(crop: Image, height: int) -> FloatArray:
    """A single crop as a recogniser batch (for signature checks and tests)."""
    width = max(height, math.ceil(height * crop.shape[1] / max(1, crop.shape[0])))
    img = cv2.resize(crop, (width, height)).astype(np.float32)
    return np.ascontiguousarray(((img / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None])
