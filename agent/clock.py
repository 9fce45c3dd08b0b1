"""The agent's wall clock: is it synchronised, and how far off may it be.

Segment times are wall-clock UTC, so their quality is the clock's. The kernel knows whether
NTP (chrony, systemd-timesyncd, ntpd) disciplines the clock and how far off it may be:
``adjtimex(2)`` with no modes set only reads that state and needs no privilege. Each segment
records it (docs/design/segments.md, "Time"), so central can tell footage stamped by a
synchronised clock from footage stamped by a box that booted without its network.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from typing import Literal

ClockSync = Literal["synced", "unsynced", "unknown"]

# <sys/timex.h>
_TIME_ERROR = 5  # adjtimex() return value: the clock is not synchronised
_STA_UNSYNC = 0x0040
_STA_NANO = 0x2000  # offset is in nanoseconds instead of microseconds


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class ClockState:
    """What the kernel says about the wall clock.

    ``error_ms`` is the kernel's maximum error bound (it grows while nothing disciplines the
    clock); ``offset_ms`` the correction NTP is still slewing in. Both None when unknown.
    """

    sync: ClockSync
    error_ms: int | None = None
    offset_ms: int | None = None


UNKNOWN = ClockState("unknown")


def _adjtimex() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    fn = getattr(ctypes.CDLL(name, use_errno=True), "adjtimex", None)
    return fn


_ADJTIMEX = _adjtimex()


def read_clock_state() -> ClockState:
    """The clock's synchronisation state, read-only (``adjtimex`` with ``modes = 0``)."""
    if _ADJTIMEX is None:
        return UNKNOWN
    tx = _Timex()
    state = _ADJTIMEX(ctypes.byref(tx))
    if state < 0:
        return UNKNOWN
    unsynced = state == _TIME_ERROR or bool(tx.status & _STA_UNSYNC)
    offset_ms = tx.offset // 1_000_000 if tx.status & _STA_NANO else tx.offset // 1_000
    return ClockState(
        sync="unsynced" if unsynced else "synced",
        error_ms=max(tx.maxerror, 0) // 1_000,
        offset_ms=int(offset_ms),
    )
