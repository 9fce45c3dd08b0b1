"""Brazilian licence-plate normalisation: Mercosul ``ABC1D23`` and the old ``ABC1234`` format."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

# Canonical storage form: seven characters, upper case, no separator.
PLATE_RE = re.compile(r"^[A-Z]{3}[0-9][A-Z0-9][0-9]{2}$")
MERCOSUL_RE = re.compile(r"^[A-Z]{3}[0-9][A-Z][0-9]{2}$")
OLD_RE = re.compile(r"^[A-Z]{3}[0-9]{4}$")

PlateFormat = Literal["mercosul", "old"]

# OCR confusions between look-alike glyphs, applied only where the format demands the other class.
_TO_LETTER = {"0": "O", "1": "I", "2": "Z", "4": "A", "5": "S", "6": "G", "7": "T", "8": "B"}
_TO_DIGIT = {v: k for k, v in _TO_LETTER.items()} | {"D": "0", "Q": "0", "U": "0", "L": "1"}

# The Mercosul conversion maps the old format's second digit to a letter (0->A ... 9->J).
_MERCOSUL_LETTER = "ABCDEFGHIJ"


def strip(text: str) -> str:
    """Upper-case, keeping only ASCII letters and digits (``abc-1234`` -> ``ABC1234``)."""
    return "".join(ch for ch in text.upper() if ch.isascii() and ch.isalnum())


def plate_format(plate: str) -> PlateFormat | None:
    """Which Brazilian format a canonical plate has, or None if it is not a plate."""
    if MERCOSUL_RE.match(plate):
        return "mercosul"
    if OLD_RE.match(plate):
        return "old"
    return None


def normalize(text: str) -> str | None:
    """Canonical plate for OCR or user text, or None when it cannot be a Brazilian plate.

    Letter/digit look-alikes are corrected by position: positions 1-3 are letters, 4, 6 and 7
    digits, and position 5 is a digit (old format) or a letter (Mercosul). An ambiguous fifth
    character is kept as read.
    """
    raw = strip(text)
    if len(raw) != 7:
        return None
    chars = list(raw)
    for i in (0, 1, 2):
        chars[i] = _TO_LETTER.get(chars[i], chars[i])
    for i in (3, 5, 6):
        chars[i] = _TO_DIGIT.get(chars[i], chars[i])
    plate = "".join(chars)
    return plate if PLATE_RE.match(plate) else None


def display(plate: str) -> str:
    """Human form: old plates as ``ABC-1234``, Mercosul as ``ABC1D23``."""
    return f"{plate[:3]}-{plate[3:]}" if OLD_RE.match(plate) else plate


def to_mercosul(plate: str) -> str:
    """The Mercosul equivalent of an old plate (the same vehicle after re-plating)."""
    if not OLD_RE.match(plate):
        return plate
    return plate[:4] + _MERCOSUL_LETTER[int(plate[4])] + plate[5:]


# --- Reading OCR output (agent/lpr) ---------------------------------------------------------

# The letter classes of each format by position: True = letter, False = digit.
_LAYOUT: dict[PlateFormat, tuple[bool, ...]] = {
    "mercosul": (True, True, True, False, True, False, False),
    "old": (True, True, True, False, False, False, False),
}
# Look-alikes across the two classes that reading corrects, both ways: the pairs plate fonts
# barely tell apart. Looser ones (A/4, T/7, L/1, U/0) are left to ``normalize`` (search text):
# in OCR output they turn shop signs into plates ("LOJA 241" -> LOJ4241) far more often than
# they fix a misread plate.
_CONFUSABLE: dict[str, str] = {
    "0": "O", "O": "0", "1": "I", "I": "1", "8": "B", "B": "8", "5": "S", "S": "5",
    "2": "Z", "Z": "2", "6": "G", "G": "6", "Q": "0", "D": "0",
}  # fmt: skip
# What a plate's frame or a screw looks like when read as a glyph; only these may be dropped
# around seven characters.
BORDER_GLYPHS = frozenset("I1LJT")
TWIN_WEIGHT = 0.5
MAX_FIXES = 2  # more look-alike corrections than this and the text is not taken for a plate


# Pairs that the plates' fonts barely tell apart: where the plate's look (Mercosul's blue band,
# the old grey plate) fixes the fifth character's class, it overrules the reading for these.
_TWINS = frozenset({"O0", "0O", "I1", "1I", "B8", "8B", "S5", "5S", "Z2", "2Z", "G6", "6G",
                    "Q0", "D0"})  # fmt: skip


@dataclass(frozen=True)
class _Reading:
    plate: str
    fmt: PlateFormat
    score: float  # geometric mean over the seven positions
    fixes: int  # look-alike corrections
    fifth: str  # the fifth character as read + as corrected ("" if not corrected)


def _read_as(positions: list[dict[str, float]], fmt: PlateFormat) -> _Reading | None:
    """The best plate of ``fmt`` for seven positions of character probabilities. A position's
    score for a character includes half the probability of its look-alike of the other class."""
    chars: list[str] = []
    log_score = 0.0
    fixes = 0
    fifth = ""
    for i, (probs, letter) in enumerate(zip(positions, _LAYOUT[fmt], strict=True)):
        best, best_p, fixed = "", 0.0, False
        options = set(probs) | {_CONFUSABLE[c] for c in probs if c in _CONFUSABLE}
        for ch in sorted(options):
            if ch.isalpha() != letter:
                continue
            p = probs.get(ch, 0.0)
            twin = _CONFUSABLE.get(ch)
            twin_p = probs.get(twin, 0.0) if twin and twin.isalpha() != letter else 0.0
            # A look-alike of the other class counts, at half weight: the fix is plausible,
            # but a confident reading of the other class is evidence against the format.
            if p + TWIN_WEIGHT * twin_p > best_p:
                best, best_p, fixed = ch, p + TWIN_WEIGHT * twin_p, twin_p > p
        if not best or best_p <= 0.0:
            return None
        chars.append(best)
        log_score += math.log(min(1.0, best_p))
        fixes += fixed
        if fixed and i == 4:
            fifth = max(probs, key=probs.__getitem__) + best
    return _Reading("".join(chars), fmt, math.exp(log_score / len(chars)), fixes, fifth)


def plate_from_alternatives(
    positions: list[dict[str, float]], style: PlateFormat | None = None, max_fixes: int = MAX_FIXES
) -> tuple[str, float] | None:
    """The most likely canonical plate for an OCR reading given as per-character probabilities
    (one ``{char: probability}`` per emitted character), with its confidence; None when the text
    cannot be a plate.

    ``style`` is what the plate looks like, when known (Mercosul's blue band; the old grey
    plate): it decides the fifth character's class between look-alikes the fonts barely tell
    apart (O/0, I/1, B/8, S/5, Z/2, G/6); a clearly different glyph (an ``E``, an ``A`` read
    where the look says old format) keeps the text's own format. Readings of 8 or 9 characters
    are tried at each 7-character window when what is left out looks like the plate's frame
    (``I``, ``1``...). More than ``max_fixes`` look-alike corrections reject the text: signs
    and shop names bent into a plate shape (``PADARIA`` would need three) are not plates.
    """
    if not 7 <= len(positions) <= 9:
        return None
    readings: list[tuple[_Reading, float]] = []
    for start in range(len(positions) - 6):
        extra = positions[:start] + positions[start + 7 :]
        if not all(max(p, key=p.__getitem__, default="") in BORDER_GLYPHS for p in extra):
            continue  # "HOTEL 2000" must not become TEL2000
        window = positions[start : start + 7]
        for fmt in ("mercosul", "old"):
            got = _read_as(window, fmt)
            if got is not None and got.fixes <= max_fixes:
                # Characters outside the window cost confidence.
                readings.append((got, got.score * 0.9 ** (len(positions) - 7)))
    if style:
        styled = [
            r for r in readings if r[0].fmt == style and (not r[0].fifth or r[0].fifth in _TWINS)
        ]
        if styled:
            best = max(styled, key=lambda r: r[1] * 0.97 ** r[0].fixes)
            return best[0].plate, best[1]
    if not readings:
        return None
    # Corrections cost a little, so that a tie (O or 0 equally likely) keeps what was read.
    best = max(readings, key=lambda r: r[1] * 0.97 ** r[0].fixes)
    return best[0].plate, best[1]


def read_plate(
    text: str, style: PlateFormat | None = None, max_fixes: int = MAX_FIXES
) -> str | None:
    """Canonical plate for OCR text (exact characters, no probabilities), or None.

    Like ``normalize`` but strict about what is not a plate: at most ``max_fixes`` look-alike
    corrections, and ``style`` (when the plate's look is known) decides the fifth character's
    class.
    """
    raw = strip(text)
    got = plate_from_alternatives([{ch: 1.0} for ch in raw], style, max_fixes)
    return got[0] if got else None


def edit_distance(a: str, b: str, limit: int = 2) -> int:
    """Levenshtein distance between two plates, capped at ``limit`` + 1 (cheap for watchlists)."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        if min(cur) > limit:
            return limit + 1
        prev = cur
    return min(prev[-1], limit + 1)
