"""Brazilian licence-plate normalisation: Mercosul ``ABC1D23`` and the old ``ABC1234`` format."""

from __future__ import annotations

import re
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
