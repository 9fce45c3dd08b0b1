"""Local watchlist matching: a plate read is checked against the agent's copy of the city's
watchlists (``Store.replace_watchlist`` loads it), so an alert fires while offline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.store import Store, WatchEntry
from shared.plates import edit_distance, to_mercosul

Match = Literal["exact", "possible"]


@dataclass(frozen=True)
class WatchMatch:
    entry: WatchEntry
    match: Match


def match_plate(plate: str, entries: list[WatchEntry]) -> list[WatchMatch]:
    """Entries ``plate`` matches: exactly (also an old plate and its Mercosul conversion, the
    same vehicle re-plated), or one character apart (``possible``: a misread glyph)."""
    found: list[WatchMatch] = []
    mine = {plate, to_mercosul(plate)}
    for entry in entries:
        theirs = {entry.plate, to_mercosul(entry.plate)}
        if mine & theirs:
            found.append(WatchMatch(entry, "exact"))
        elif min(edit_distance(a, b, limit=1) for a in mine for b in theirs) == 1:
            found.append(WatchMatch(entry, "possible"))
    return found


class WatchlistMatcher:
    """The store's watchlist, held in memory and reloaded when a new one is loaded."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.entries: list[WatchEntry] = []
        self._version: tuple[int, int] | None = None

    async def refresh(self) -> None:
        version = await self.store.watchlist_version()
        if version != self._version:
            self.entries = await self.store.watchlist()
            self._version = version

    def match(self, plate: str) -> list[WatchMatch]:
        return match_plate(plate, self.entries)
