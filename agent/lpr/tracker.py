"""One plate read per vehicle passage: frame reads are grouped into tracks (same or nearly the
same text, or a box close to where the track was), the text is voted over the track, and a
track is emitted once it has not been seen for ``gap_ms``. A per-camera suppression window drops
a plate emitted again soon after (a car waiting at a light, a camera seeing it twice).

A *settled* track (its text read the same at least ``SETTLED_READS`` times, at least
``SETTLED_SHARE`` of its votes) need not be read on every frame: a candidate where the track
is expected next (its box moved by the track's last velocity, overlapping by ``COAST_IOU``)
extends it without being read (``coast``), at most ``MAX_COASTS`` frames in a row, so the
text is still checked on every third frame and a different vehicle taking its place is read
within a fraction of a second. Reading is most of a frame's cost once plates are found."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.lpr.recognizer import PlateCandidate, iou
from shared.plates import edit_distance

Box = tuple[int, int, int, int]

SETTLED_READS = 3
SETTLED_SHARE = 0.8
COAST_IOU = 0.5
MAX_COASTS = 2


@dataclass(frozen=True)
class PlatePassage:
    """The result of one track: what is stored and sent as one plate read."""

    plate: str
    confidence: float
    first_ms: int
    last_ms: int
    best_ms: int  # the frame the evidence crop comes from
    box: tuple[int, int, int, int]  # (x, y, w, h) on that frame
    crop_jpeg: bytes | None
    hits: int  # frames with a read of this vehicle
    votes: dict[str, float]  # text -> summed confidence
    context_jpeg: bytes | None = None  # the whole frame of the evidence crop, when asked


@dataclass
class _Track:
    first_ms: int
    last_ms: int
    box: tuple[int, int, int, int]
    votes: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # text -> (confidence, ts, box, crop, context) of its best read
    best: dict[str, tuple[float, int, Box, bytes | None, bytes | None]] = field(
        default_factory=dict
    )
    hits: int = 0
    coasts: int = 0  # frames in a row extended without a read
    coasted_ms: int | None = None  # the frame it was last extended on without a read
    velocity: tuple[float, float] = (0.0, 0.0)  # px per ms of the box's centre

    def moved(self, box: Box, ts_ms: int) -> None:
        dt = ts_ms - self.last_ms
        if dt > 0:
            self.velocity = (
                (box[0] + box[2] / 2 - self.box[0] - self.box[2] / 2) / dt,
                (box[1] + box[3] / 2 - self.box[1] - self.box[3] / 2) / dt,
            )
        self.last_ms = ts_ms
        self.box = box

    def add(
        self, read: PlateCandidate, ts_ms: int, crop: bytes | None, context: bytes | None = None
    ) -> None:
        self.hits += 1
        self.coasts = 0
        self.moved(read.box, ts_ms)
        self.votes[read.plate] += read.confidence
        self.counts[read.plate] += 1
        held = self.best.get(read.plate)
        if held is None or read.confidence > held[0]:
            self.best[read.plate] = (read.confidence, ts_ms, read.box, crop, context)

    def settled(self) -> bool:
        plate = max(self.counts, key=lambda p: self.counts[p], default=None)
        return (
            plate is not None
            and self.counts[plate] >= SETTLED_READS
            and self.votes[plate] >= SETTLED_SHARE * sum(self.votes.values())
        )

    def expected(self, ts_ms: int) -> Box:
        """Where the box should be at ``ts_ms``, at the track's last velocity."""
        dt = ts_ms - self.last_ms
        x, y, w, h = self.box
        return (round(x + self.velocity[0] * dt), round(y + self.velocity[1] * dt), w, h)

    def near(self, box: tuple[int, int, int, int], ts_ms: int, max_speed: float) -> bool:
        """Within the distance a plate can travel since last seen (``max_speed`` plate widths
        per second), at about the same size."""
        x, y, w, h = box
        tx, ty, tw, th = self.box
        dt_s = max(0.05, (ts_ms - self.last_ms) / 1000)
        dist = ((x + w / 2 - tx - tw / 2) ** 2 + (y + h / 2 - ty - th / 2) ** 2) ** 0.5
        return dist <= max_speed * max(w, tw) * dt_s and 0.5 <= w / max(1, tw) <= 2.0


class PlateTracker:
    """Tracks for one camera. Not thread-safe: one per worker."""

    def __init__(
        self,
        *,
        gap_ms: int = 1500,
        suppress_ms: int = 60_000,
        min_hits: int = 2,
        single_hit_confidence: float = 0.93,
        max_speed: float = 12.0,
    ) -> None:
        self.gap_ms = gap_ms
        self.suppress_ms = suppress_ms
        self.min_hits = min_hits
        self.single_hit_confidence = single_hit_confidence
        self.max_speed = max_speed
        self._tracks: list[_Track] = []
        self._emitted: dict[str, int] = {}  # plate -> last_ms of its last passage
        self.suppressed = 0
        self.discarded = 0  # tracks too weak to report
        self.coasted = 0  # candidates not read: a settled track extended instead

    @property
    def open_tracks(self) -> int:
        return len(self._tracks)

    def coast(self, ts_ms: int, box: Box) -> bool:
        """True if a settled track is where ``box`` is on the frame at ``ts_ms``: the track
        is extended to it and the candidate need not be read (``PlateReader.read``'s
        ``skip``). One candidate a track per frame; ``MAX_COASTS`` frames in a row at most."""
        best: tuple[float, _Track] | None = None
        for track in self._tracks:
            if track.coasted_ms == ts_ms or track.coasts >= MAX_COASTS or ts_ms <= track.last_ms:
                continue
            if ts_ms - track.last_ms > self.gap_ms or not track.settled():
                continue
            overlap = iou(track.expected(ts_ms), box)
            if overlap >= COAST_IOU and (best is None or overlap > best[0]):
                best = (overlap, track)
        if best is None:
            return False
        track = best[1]
        track.coasts += 1
        track.coasted_ms = ts_ms
        track.moved(box, ts_ms)
        self.coasted += 1
        return True

    def update(
        self,
        ts_ms: int,
        reads: list[PlateCandidate],
        crop: Callable[[PlateCandidate], bytes | None] | None = None,
        context: Callable[[], bytes | None] | None = None,
    ) -> list[PlatePassage]:
        """Add one frame's reads (``crop`` makes a read's evidence JPEG and ``context`` the
        frame's, asked only for a track's best read so far, the frame's once); returns the
        passages that ended before this frame."""
        done = self._expire(ts_ms)
        # a track extended on this frame without a read takes no read of it either
        taken: set[int] = {id(t) for t in self._tracks if t.coasted_ms == ts_ms}
        frame_jpeg: list[bytes | None] = []  # made once, for every track that wants it
        for read in sorted(reads, key=lambda r: -r.confidence):
            track = self._match(read, ts_ms, taken)
            if track is None:
                track = _Track(first_ms=ts_ms, last_ms=ts_ms, box=read.box)
                self._tracks.append(track)
            taken.add(id(track))
            held = track.best.get(read.plate)
            better = held is None or read.confidence > held[0]
            evidence = crop(read) if crop and better else None
            if context and better and not frame_jpeg:
                frame_jpeg.append(context())
            track.add(read, ts_ms, evidence, frame_jpeg[0] if better and frame_jpeg else None)
        return done

    def flush(self) -> list[PlatePassage]:
        """End every open track (the camera stops)."""
        return self._expire(None)

    def _match(self, read: PlateCandidate, ts_ms: int, taken: set[int]) -> _Track | None:
        best: tuple[int, _Track] | None = None
        for track in self._tracks:
            if id(track) in taken:
                continue
            distance = min(edit_distance(read.plate, p, limit=4) for p in track.votes)
            # The same text (the track is recent), or a partly different reading nearby.
            same = distance == 0 or (distance <= 4 and track.near(read.box, ts_ms, self.max_speed))
            if same and (best is None or distance < best[0]):
                best = (distance, track)
        return best[1] if best else None

    def _expire(self, now_ms: int | None) -> list[PlatePassage]:
        ended = [t for t in self._tracks if now_ms is None or now_ms - t.last_ms > self.gap_ms]
        if not ended:
            return []
        self._tracks = [t for t in self._tracks if t not in ended]
        out: list[PlatePassage] = []
        for track in sorted(ended, key=lambda t: t.first_ms):
            passage = self._result(track)
            if passage is None:
                self.discarded += 1
                continue
            last = self._emitted.get(passage.plate)
            self._emitted[passage.plate] = passage.last_ms
            if last is not None and passage.first_ms - last < self.suppress_ms:
                self.suppressed += 1
                continue
            out.append(passage)
        horizon = (now_ms or 0) - self.suppress_ms
        self._emitted = {p: t for p, t in self._emitted.items() if t >= horizon}
        return out

    def _result(self, track: _Track) -> PlatePassage | None:
        plate = max(track.votes, key=lambda p: (track.votes[p], track.counts[p]))
        best_conf, best_ms, box, crop, context = track.best[plate]
        if track.hits < self.min_hits and best_conf < self.single_hit_confidence:
            return None
        share = track.votes[plate] / sum(track.votes.values())
        confidence = round(share * track.votes[plate] / track.counts[plate], 4)
        return PlatePassage(
            plate=plate,
            confidence=confidence,
            first_ms=track.first_ms,
            last_ms=track.last_ms,
            best_ms=best_ms,
            box=box,
            crop_jpeg=crop,
            context_jpeg=context,
            hits=track.hits,
            votes=dict(track.votes),
        )
