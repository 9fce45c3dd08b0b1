"""The recogniser with its real models (PP-OCRv6 from the rapidocr wheel): labelled synthetic
passages read once each, nothing read on plate-free frames, and bad model files refused with a
clear error."""

from pathlib import Path

import cv2
import pytest

from agent.lpr.models import ModelError, Recognizer, default_model_dir
from agent.lpr.recognizer import PlateReader
from agent.lpr.tracker import PlateTracker
from devstack.scene import bench_empty_frames, bench_passages


@pytest.fixture(scope="module")
def reader() -> PlateReader:
    cv2.setNumThreads(1)
    return PlateReader(Recognizer.load(None))


def test_passages_read_once_each(reader: PlateReader) -> None:
    exact = 0
    passages = list(bench_passages(seed=5, count=12))
    for passage in passages:
        tracker = PlateTracker()
        emitted = []
        for i, frame in enumerate(passage.frames):
            emitted += tracker.update(i * 200, reader.read(frame).reads)
        emitted += tracker.flush()
        assert len(emitted) <= 1, f"{passage.plate}: {[p.plate for p in emitted]}"
        exact += [p.plate for p in emitted] == [passage.plate]
        for p in emitted:
            assert 0 < p.confidence <= 1 and p.hits >= 1 and p.first_ms <= p.last_ms
    # Degraded scenes (night, blur, tilt): almost all, not necessarily all.
    assert exact >= len(passages) - 2


def test_no_reads_without_plates(reader: PlateReader) -> None:
    reads = [
        r.plate
        for _, frame in bench_empty_frames(seed=9, count=25)
        for r in reader.read(frame).reads
    ]
    assert reads == []


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        Recognizer.load(tmp_path / "nope.onnx")


def test_not_an_onnx_file(tmp_path: Path) -> None:
    bad = tmp_path / "rec.onnx"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        Recognizer.load(bad)


def test_wrong_signature_is_refused() -> None:
    # The text detector takes images of any height and gives a map, not a CTC sequence.
    detector = default_model_dir() / "PP-OCRv6_det_small.onnx"
    with pytest.raises(ModelError, match=r"input must be \[N, 3, H, W\] with a fixed height"):
        Recognizer.load(detector)


def test_character_list_must_fit_the_model(tmp_path: Path) -> None:
    charset = tmp_path / "chars.txt"
    charset.write_text("\n".join("0123456789"))
    with pytest.raises(ModelError, match="do not fit a character list of 10"):
        Recognizer.load(None, charset)
