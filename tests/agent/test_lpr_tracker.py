"""The per-camera tracker: frame reads become one passage per vehicle with a voted text;
repeats within the suppression window are dropped; lone weak reads are not passages."""

from collections.abc import Callable

from agent.lpr.recognizer import PlateCandidate
from agent.lpr.tracker import PlateTracker


def read(plate: str, x: int, conf: float = 0.95) -> PlateCandidate:
    return PlateCandidate(plate, conf, (x, 300, 120, 24), plate, None)


def run(tracker: PlateTracker, frames: list[tuple[int, list[PlateCandidate]]]) -> list[str]:
    out = []
    for ts, reads in frames:
        out += [p.plate for p in tracker.update(ts, reads, crop=lambda r: r.plate.encode())]
    return out


def test_two_cars_a_misread_and_the_vote() -> None:
    tracker = PlateTracker()
    frames = [
        (0, [read("BRA2E19", 100), read("ABC1234", 900)]),
        (200, [read("BRA2E18", 160, 0.7), read("ABC1234", 850)]),  # one glyph misread
        (400, [read("BRA2E19", 220), read("ABC1234", 800)]),
        (600, [read("BRA2E19", 280)]),
    ]
    assert run(tracker, frames) == []  # nothing ends while the cars are in view
    passages = tracker.update(5000, [])
    assert sorted(p.plate for p in passages) == ["ABC1234", "BRA2E19"]
    bra = next(p for p in passages if p.plate == "BRA2E19")
    assert (bra.first_ms, bra.last_ms, bra.hits) == (0, 600, 4)
    assert bra.votes["BRA2E18"] < bra.votes["BRA2E19"] and bra.crop_jpeg == b"BRA2E19"
    # the evidence is the first of the equally confident reads
    assert (bra.best_ms, bra.box) == (0, (100, 300, 120, 24))
    assert 0 < bra.confidence < 1  # a dissenting frame lowers it


def test_repeat_within_the_window_is_suppressed() -> None:
    tracker = PlateTracker(suppress_ms=60_000)
    first = [(0, [read("BRA2E19", 100)]), (200, [read("BRA2E19", 150)]), (3000, [])]
    assert run(tracker, first) == ["BRA2E19"]
    again = [(20_000, [read("BRA2E19", 100)]), (20_200, [read("BRA2E19", 150)]), (23_000, [])]
    assert run(tracker, again) == [] and tracker.suppressed == 1
    later = [(90_000, [read("BRA2E19", 100)]), (90_200, [read("BRA2E19", 150)]), (93_000, [])]
    assert run(tracker, later) == ["BRA2E19"]


def test_lone_weak_read_is_not_a_passage() -> None:
    tracker = PlateTracker()
    assert run(tracker, [(0, [read("XYZ1A23", 100, 0.7)]), (5000, [])]) == []
    assert tracker.discarded == 1
    assert run(tracker, [(6000, [read("QWE4R56", 100, 0.99)]), (9000, [])]) == ["QWE4R56"]


def test_flush_ends_open_tracks() -> None:
    tracker = PlateTracker()
    run(tracker, [(0, [read("BRA2E19", 100)]), (200, [read("BRA2E19", 140)])])
    assert [p.plate for p in tracker.flush()] == ["BRA2E19"] and tracker.open_tracks == 0


def test_settled_track_coasts_but_reads_every_third_frame_and_only_where_expected() -> None:
    tracker = PlateTracker()
    # Three agreeing reads, moving 40 px a frame: the track is settled.
    run(tracker, [(ts, [read("BRA2E19", 100 + ts // 5)]) for ts in (0, 200, 400)])
    # Where the track is expected next (x = 220): not read. Far from it, or in a frame
    # already taken by the track: read.
    assert tracker.coast(600, (220, 300, 120, 24))
    assert not tracker.coast(600, (224, 300, 120, 24))  # one candidate a track per frame
    assert not tracker.coast(600, (700, 300, 120, 24))  # another car: read
    run(tracker, [(600, [])])
    assert tracker.coast(800, (262, 302, 120, 24))  # the velocity carries it on
    run(tracker, [(800, [])])
    # Two frames in a row without a read: the third is read again.
    assert not tracker.coast(1000, (300, 300, 120, 24))
    run(tracker, [(1000, [read("BRA2E19", 300)])])
    assert tracker.coast(1200, (340, 300, 120, 24))
    passages = tracker.update(5000, [])
    assert [(p.plate, p.first_ms, p.last_ms, p.hits) for p in passages] == [("BRA2E19", 0, 1200, 4)]
    assert tracker.coasted == 3


def test_unsettled_track_is_always_read() -> None:
    tracker = PlateTracker()
    # disagreeing reads: no text has three votes yet
    run(tracker, [(0, [read("BRA2E19", 100)]), (200, [read("BRA2E18", 140, 0.9)])])
    assert not tracker.coast(400, (180, 300, 120, 24))
    run(tracker, [(400, [read("BRA2E19", 180)]), (600, [read("BRA2E19", 220)])])
    # three agreeing votes, but a fifth of the weight dissents: still read
    assert not tracker.coast(800, (260, 300, 120, 24))
    run(tracker, [(800, [read("BRA2E19", 260)])])
    assert tracker.coast(1000, (300, 300, 120, 24))


def test_context_frame_is_made_once_a_frame_and_kept_with_the_best_read() -> None:
    tracker = PlateTracker()
    made: list[int] = []

    def frame_of(ts: int) -> Callable[[], bytes]:
        def make() -> bytes:
            made.append(ts)
            return f"frame {ts}".encode()

        return make

    frames = [
        (0, [read("BRA2E19", 100, 0.90), read("ABC1234", 900, 0.91)]),
        (200, [read("BRA2E19", 140, 0.97), read("ABC1234", 860, 0.80)]),  # BRA's best
        (400, [read("BRA2E19", 180, 0.95), read("ABC1234", 820, 0.85)]),  # no new best
    ]
    for ts, reads in frames:
        tracker.update(ts, reads, crop=lambda r: r.plate.encode(), context=frame_of(ts))
    assert made == [0, 200]  # both tracks improved on frame 0: one JPEG
    passages = {p.plate: p for p in tracker.update(5000, [])}
    assert passages["BRA2E19"].context_jpeg == b"frame 200"
    assert passages["ABC1234"].context_jpeg == b"frame 0"
    # without the callback there is no context
    plain = PlateTracker()
    run(plain, [(0, [read("BRA2E19", 100)]), (200, [read("BRA2E19", 140)])])
    assert [p.context_jpeg for p in plain.flush()] == [None]
