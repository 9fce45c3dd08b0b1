"""Configurable LPR models: a YOLO plate detector (YOLOv5/v7 and YOLOv8/v11 output layouts) and a
fast-plate-ocr style slot reader, each checked at load.

No such models ship and nothing is downloaded: the models here are tiny ONNX graphs built in
the test whose outputs are constants (a detector "seeing" boxes where the test put them, a
reader "spelling" a fixed plate). They prove the adapters — signatures, letterbox scaling,
thresholds, NMS, decoding, wiring into the reader and the running agent — not any model's
accuracy (``python -m bench.lpr --det-model PATH`` measures a real one)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from agent.config import ConfigError, parse_config
from agent.lpr.models import (
    FAST_PLATE_OCR_ALPHABET,
    Detector,
    ModelError,
    Recognizer,
    SlotReader,
    load_recognizer,
)
from agent.lpr.recognizer import PlateReader
from devstack.scene import render_plate
from tests.agent.test_lpr_agent import db_rows, lpr_camera_entry
from tests.agent.test_reload import config_data, running_agent

Dim = int | str | None

# Two plates on a 1280x720 street-grey frame: (text, format, x, y, width); 3.08:1 plates.
PLATES = [("BRA2E19", "mercosul", 260, 430, 190), ("QRS4567", "old", 820, 250, 170)]


def plate_box(index: int) -> tuple[int, int, int, int]:
    _, _, x, y, w = PLATES[index]
    return x, y, w, round(w / 3.08)


@pytest.fixture(scope="module")
def frame() -> npt.NDArray[np.uint8]:
    rng = random.Random(7)
    img = np.full((720, 1280, 3), 95, np.uint8)
    cv2.rectangle(img, (150, 330), (620, 600), (60, 40, 130), -1)  # a car's front around A
    for i, (text, fmt, _, _, _) in enumerate(PLATES):
        x, y, w, h = plate_box(i)
        img[y : y + h, x : x + w] = render_plate(text, fmt, w, h, rng)  # type: ignore[arg-type]
    return img


@pytest.fixture(scope="module")
def ctc() -> Recognizer:
    cv2.setNumThreads(1)
    return Recognizer.load(None)


def save_model(
    path: Path,
    inputs: list[tuple[str, int, list[Dim]]],
    output: npt.NDArray[np.float32],
    output_shape: list[Dim],
    *,
    batch_from_input: bool = False,
) -> Path:
    """An ONNX model whose (first) output is the constant ``output``, broadcast over the batch
    of the first input when ``batch_from_input``: zero times the input's maximum is added, so
    the graph reads its input as a real one does."""
    name = inputs[0][0]
    const = numpy_helper.from_array(output.astype(np.float32), "const")
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    axes = numpy_helper.from_array(np.array([1, 2], np.int64), "axes")
    nodes = [helper.make_node("Cast", [name], ["as_float"], to=TensorProto.FLOAT)]
    if batch_from_input:
        # [N, ...] -> max per image [N] -> [N, 1(, 1)]: the output's batch follows the input's
        nodes += [
            helper.make_node("ReduceMax", ["as_float"], ["peak"], axes=[1, 2, 3], keepdims=0),
            helper.make_node(
                "Unsqueeze", ["peak", "one" if len(output_shape) == 2 else "axes"], ["peak_n"]
            ),
        ]
    else:
        nodes.append(helper.make_node("ReduceMax", ["as_float"], ["peak_n"], keepdims=0))
    nodes += [
        helper.make_node("Mul", ["peak_n", "zero"], ["nothing"]),
        helper.make_node("Add", ["const", "nothing"], ["out"]),
    ]
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, e, s) for n, e, s in inputs],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, output_shape)],
        [const, zero, axes, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def letterboxed(box: tuple[int, int, int, int], side: int = 640) -> list[float]:
    """(cx, cy, w, h) of a frame box on a ``side`` square letterbox of the 1280x720 frame:
    scale side/1280, the 720 rows centred (Ultralytics' letterbox)."""
    r = side / 1280
    top = (side - 720 * r) / 2
    x, y, w, h = box
    return [(x + w / 2) * r, (y + h / 2) * r + top, w * r, h * r]


def yolov8(boxes: list[tuple[list[float], list[float]]], n: int = 40) -> npt.NDArray[np.float32]:
    """[1, 4 + classes, n]: each (cx, cy, w, h) with its class scores; the rest zero."""
    classes = len(boxes[0][1])
    out = np.zeros((1, 4 + classes, n), np.float32)
    for i, (xywh, scores) in enumerate(boxes):
        out[0, :, i] = [*xywh, *scores]
    return out


def yolov5(boxes: list[tuple[list[float], float, list[float]]], n: int = 60) -> Any:
    """[1, n, 5 + classes]: each (cx, cy, w, h), objectness and class scores."""
    classes = len(boxes[0][2])
    out = np.zeros((1, n, 5 + classes), np.float32)
    for i, (xywh, obj, scores) in enumerate(boxes):
        out[0, i] = [*xywh, obj, *scores]
    return out


IMAGE = ("images", TensorProto.FLOAT, [1, 3, 640, 640])


def test_without_a_detector_both_plates_are_candidates(frame: Any, ctc: Recognizer) -> None:
    """The baseline the detector tests rely on: the built-in search reads both plates."""
    reads = PlateReader(ctc).read(frame).reads
    assert sorted(r.plate for r in reads) == sorted(p[0] for p in PLATES)


def test_yolov8_boxes_replace_the_search(frame: Any, ctc: Recognizer, tmp_path: Path) -> None:
    a, b = letterboxed(plate_box(0)), letterboxed(plate_box(1))
    shifted = [a[0] + 3, a[1] + 1, a[2] * 1.05, a[3]]
    output = yolov8(
        [
            (a, [0.91]),  # plate A
            (shifted, [0.83]),  # the same plate again, a little off: NMS drops it
            (b, [0.3]),  # plate B, below det_conf
            ([100, 100, 40, 12], [0.1]),  # noise
        ]
    )
    model = save_model(tmp_path / "v8.onnx", [IMAGE], output, [1, 5, 40])
    det = Detector.load(model, conf=0.4)
    assert (det.layout, det.classes, det.width, det.height) == ("yolov8", 1, 640, 640)

    boxes = det.detect(frame, 6)
    assert len(boxes) == 1  # the duplicate suppressed, B and the noise under the threshold
    (x, y, w, h), score = boxes[0]
    assert score == pytest.approx(0.91)
    ax, ay, aw, ah = plate_box(0)
    assert abs(x - ax) <= 1 and abs(y - ay) <= 1 and abs(w - aw) <= 1 and abs(h - ah) <= 1

    result = PlateReader(ctc, det).read(frame)
    assert result.candidates == 1
    assert [(r.plate, r.box) for r in result.reads] == [("BRA2E19", (x, y, w, h))]
    assert result.reads[0].style == "mercosul"  # the band found inside the box
    # B is on the frame and the built-in search reads it, but the detector did not see it
    assert "QRS4567" not in [r.plate for r in result.reads]


def test_yolov5_layout_dynamic_input(frame: Any, ctc: Recognizer, tmp_path: Path) -> None:
    """YOLOv5/v7 rows (objectness times the best class score), two classes, an input of
    dynamic height and width (letterboxed to 640)."""
    a, b = letterboxed(plate_box(0)), letterboxed(plate_box(1))
    output = yolov5(
        [
            (b, 0.95, [0.1, 0.9]),  # plate B: 0.855
            (a, 0.9, [0.4, 0.2]),  # plate A: 0.36, below det_conf
            ([b[0] - 2, b[1], b[2], b[3] * 1.1], 0.9, [0.8, 0.1]),  # B again: 0.72, suppressed
        ]
    )
    image = ("images", TensorProto.FLOAT, [1, 3, "height", "width"])
    model = save_model(tmp_path / "v5.onnx", [image], output, [1, 60, 7])
    det = Detector.load(model, conf=0.4)
    assert (det.layout, det.classes, det.width, det.height) == ("yolov5", 2, 640, 640)
    boxes = det.detect(frame, 6)
    assert [round(s, 3) for _, s in boxes] == [0.855]
    bx, by, bw, bh = plate_box(1)
    (x, y, w, h), _ = boxes[0]
    assert abs(x - bx) <= 1 and abs(y - by) <= 1 and abs(w - bw) <= 1 and abs(h - bh) <= 1
    reads = PlateReader(ctc, det).read(frame).reads
    assert [r.plate for r in reads] == ["QRS4567"]


def test_a_box_without_a_glyph_line_is_read_as_it_is(
    frame: Any, ctc: Recognizer, tmp_path: Path
) -> None:
    """When the search inside a box finds no glyph line, the box itself is read: here plate
    B's glyph line cut out and pasted on a dark frame (no plate background below the glyphs,
    which the search requires)."""
    x, y, w, h = plate_box(1)
    glyphs = frame[y + round(0.2 * h) : y + round(0.86 * h), x + 4 : x + w - 4]
    gh, gw = glyphs.shape[:2]
    canvas = np.full((720, 1280, 3), 40, np.uint8)
    canvas[100 : 100 + gh, 200 : 200 + gw] = glyphs
    output = yolov8([(letterboxed((200, 100, gw, gh)), [0.9])])
    reader = PlateReader(
        ctc, Detector.load(save_model(tmp_path / "d.onnx", [IMAGE], output, [1, 5, 40]))
    )
    assert reader.candidates(canvas)[0].band.size == 0  # no glyph line found: the box read
    assert [r.plate for r in reader.read(canvas).reads] == ["QRS4567"]


def slot_probs(text: str, slots: int, alphabet: str, p: float = 0.92) -> Any:
    """[slots, len(alphabet)]: ``text`` then pad slots, each slot ``p`` on its character."""
    out = np.full((slots, len(alphabet)), (1 - p) / (len(alphabet) - 1), np.float32)
    for i, ch in enumerate(text.ljust(slots, "_")):
        out[i, alphabet.index(ch)] = p
    return out


def slot_model(
    path: Path, text: str, *, slots: int = 9, channels: int = 1, flat: bool = False
) -> Path:
    alphabet = FAST_PLATE_OCR_ALPHABET
    probs = slot_probs(text, slots, alphabet)[None]
    shape: list[Dim] = [None, slots, len(alphabet)]
    if flat:
        probs, shape = probs.reshape(1, -1), [None, slots * len(alphabet)]
    image = ("input", TensorProto.UINT8, [None, 70, 140, channels])
    return save_model(path, [image], probs, shape, batch_from_input=True)


@pytest.mark.parametrize(("channels", "flat"), [(1, True), (3, False)])
def test_slot_reader_decodes_into_a_plate(
    frame: Any, tmp_path: Path, channels: int, flat: bool
) -> None:
    model = slot_model(tmp_path / "ocr.onnx", "RIO2A18", channels=channels, flat=flat)
    rec = load_recognizer(model, alphabet=FAST_PLATE_OCR_ALPHABET)
    assert isinstance(rec, SlotReader)
    assert (rec.height, rec.width, rec.channels, rec.slots) == (70, 140, channels, 9)
    # the built-in search finds two plate lines; the model spells its one plate for any image
    result = PlateReader(rec).read(frame)
    assert result.candidates == 2
    assert [r.plate for r in result.reads] == ["RIO2A18"]
    assert result.reads[0].raw == "RIO2A18" and result.reads[0].confidence > 0.85


def test_slot_reader_with_a_detector_reads_the_whole_box(frame: Any, tmp_path: Path) -> None:
    rec = load_recognizer(
        slot_model(tmp_path / "ocr.onnx", "RIO2A18"), None, FAST_PLATE_OCR_ALPHABET
    )
    assert isinstance(rec, SlotReader)
    det_model = save_model(
        tmp_path / "v8.onnx", [IMAGE], yolov8([(letterboxed(plate_box(0)), [0.9])]), [1, 5, 40]
    )
    reader = PlateReader(rec, Detector.load(det_model))
    lines = reader.candidates(frame)
    _, _, w, h = plate_box(0)
    # the box itself (a small margin), not the glyph line: the blue band is inside the crop
    assert len(lines) == 1 and lines[0].crop.shape[1] >= w and lines[0].crop.shape[0] >= h
    reads = reader.read(frame).reads
    assert [(r.plate, r.style) for r in reads] == [("RIO2A18", "mercosul")]


# -- bad models: a clear error at load and at config validation, naming the key ---------------


def detector_problems(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    boxes = yolov8([([320, 320, 60, 20], [0.9])])
    two = [IMAGE, ("scale", TensorProto.FLOAT, [1])]
    grey = [("images", TensorProto.FLOAT, [1, 1, 640, 640])]
    return {
        "two inputs": (
            save_model(tmp_path / "two.onnx", two, boxes, [1, 5, 40]),
            r"expected one image input \[1, 3, H, W\], got 2 inputs",
        ),
        "one channel": (
            save_model(tmp_path / "grey.onnx", grey, boxes, [1, 5, 40]),
            r"input must be a float image \[1, 3, H, W\] \(3 channels\), got \[1, 1, 640, 640\]",
        ),
        "flat output": (
            save_model(tmp_path / "flat.onnx", [IMAGE], np.zeros((1, 7), np.float32), [1, 7]),
            r"no output fits a YOLO layout: expected \[1, N, 5 \+ classes\] \(YOLOv5/v7.*"
            r"\[1, 4 \+ classes, N\] \(YOLOv8/v11.*got \[\[1, 7\]\]",
        ),
    }


@pytest.mark.parametrize("problem", ["two inputs", "one channel", "flat output"])
def test_wrong_detector_signature(tmp_path: Path, problem: str) -> None:
    model, message = detector_problems(tmp_path)[problem]
    with pytest.raises(ModelError, match=message):
        Detector.load(model)
    data = config_data(
        tmp_path / "agent",
        {"cam1": lpr_camera_entry("rtsp://127.0.0.1:8554/cam", det_model=str(model))},
    )
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(data))
    text = str(err.value)
    assert "cameras -> cam1 -> lpr" in text and f"detection model {model}" in text
    assert "got" in text


def test_missing_detector_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "plates.onnx"
    data = config_data(
        tmp_path / "agent",
        {"cam1": lpr_camera_entry("rtsp://127.0.0.1:8554/cam", det_model=str(missing))},
    )
    with pytest.raises(
        ConfigError, match=f"cameras -> cam1 -> lpr: .*{re.escape(str(missing))}: no such file"
    ):
        parse_config(yaml.safe_dump(data))


def test_slot_reader_alphabet_must_fit(tmp_path: Path) -> None:
    model = slot_model(tmp_path / "ocr.onnx", "RIO2A18", slots=7)
    short = FAST_PLATE_OCR_ALPHABET.replace("_", "")  # 36 characters for 37 classes
    with pytest.raises(ModelError, match=r"no output fits an alphabet of 36 characters"):
        load_recognizer(model, alphabet=short)
    with pytest.raises(ModelError, match=r"needs its alphabet: set lpr\.rec_alphabet"):
        load_recognizer(model)
    with pytest.raises(ModelError, match="characters must be distinct"):
        load_recognizer(model, alphabet=FAST_PLATE_OCR_ALPHABET[:-1] + "A")
    few = slot_model(tmp_path / "few.onnx", "RIO2A", slots=5)
    with pytest.raises(ModelError, match="5 slots of 37 characters: a plate has 7"):
        load_recognizer(few, alphabet=FAST_PLATE_OCR_ALPHABET)
    with pytest.raises(ModelError, match=r"takes lpr\.rec_alphabet, not lpr\.rec_charset"):
        load_recognizer(model, tmp_path / "chars.txt")
    # the bundled CTC model takes no alphabet
    with pytest.raises(ModelError, match="rec_alphabet applies to slot readers only"):
        load_recognizer(None, alphabet=FAST_PLATE_OCR_ALPHABET)

    entry = lpr_camera_entry("rtsp://127.0.0.1:8554/cam", rec_model=str(model), rec_alphabet=short)
    data = config_data(tmp_path / "agent", {"cam1": entry})
    with pytest.raises(ConfigError, match=r"cameras -> cam1 -> lpr: .*alphabet of 36 characters"):
        parse_config(yaml.safe_dump(data))
    entry["lpr"]["rec_alphabet"] = FAST_PLATE_OCR_ALPHABET
    parse_config(yaml.safe_dump(data))  # the right alphabet is accepted


# -- in the running agent ---------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_agent_reads_with_configured_detector_and_slot_reader(
    camera: Any, tmp_path: Path
) -> None:
    """The real RTSP camera through the agent with both models from its config: a detector
    reporting one box on every frame and a reader spelling RIO2A18 give exactly one passage,
    stored with its crop of that box; the scene's own plates are never read (the detector's
    boxes replaced the built-in search)."""
    det = save_model(
        tmp_path / "det.onnx",
        [IMAGE],
        yolov8([(letterboxed((600, 500, 160, 52)), [0.9])]),
        [1, 5, 40],
    )
    rec = slot_model(tmp_path / "ocr.onnx", "RIO2A18")
    lpr = {
        "det_model": str(det),
        "rec_model": str(rec),
        "rec_alphabet": FAST_PLATE_OCR_ALPHABET,
        "suppress_seconds": 3600,
    }
    async with running_agent(tmp_path, {"cam1": lpr_camera_entry(camera.url, **lpr)}) as run:
        await run.until(
            "frames read",
            lambda: run.agent.lpr.status().get("cam1", {}).get("frames_read", 0) >= 15,
            timeout_s=60,
        )
    rows = db_rows(tmp_path / "agent", "SELECT plate, box, crop_path FROM plate_reads")
    assert [r[0] for r in rows] == ["RIO2A18"]
    x, y, w, h = json.loads(rows[0][1])
    # the box in the stream's frame: the scene is 1280x720 like the letterbox above
    assert abs(x - 600) <= 2 and abs(y - 500) <= 2 and abs(w - 160) <= 2 and abs(h - 52) <= 2
    assert cv2.imread(rows[0][2]) is not None
