"""ONNX models for plate recognition: the defaults shipped in the ``rapidocr`` wheel (PP-OCRv6,
Apache-2.0) or models the config names by path: a CTC text-line recogniser, a slot reader
(fast-plate-ocr style) and a YOLO plate detector. Signatures are checked at load, so a wrong or
missing file is a clear error at start-up, never a crash on the first frame."""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

if TYPE_CHECKING:
    from agent.config import LprConfig

# Inside the rapidocr wheel (rapidocr/models/), nothing is downloaded.
DEFAULT_REC_MODEL = "PP-OCRv6_rec_small.onnx"

FloatArray = npt.NDArray[np.float32]
Image = npt.NDArray[np.uint8]
Box = tuple[int, int, int, int]  # x, y, w, h in a frame's pixels

# fast-plate-ocr's alphabet for its global models; "_" pads the slots after the plate's end.
SLOT_PAD = "_"
FAST_PLATE_OCR_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
PLATE_LENGTH = 7  # Brazilian plates (Mercosul and old)

DET_DYNAMIC_SIZE = 640  # input side for a detector whose H/W are dynamic
DET_PAD_VALUE = 114  # letterbox fill, as Ultralytics pads


class ModelError(RuntimeError):
    """A model file that cannot be used: missing, unreadable, or of the wrong shape."""


def default_model_dir() -> Path:
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or spec.origin is None:
        raise ModelError(
            "the default LPR models come with the 'rapidocr' package, which is not installed; "
            "install the agent's dependencies or set lpr.rec_model / lpr.det_model to ONNX files"
        )
    return Path(spec.origin).parent / "models"


def resolve(path: Path | None, default_name: str) -> Path:
    return path if path is not None else default_model_dir() / default_name


def session(path: Path, what: str) -> ort.InferenceSession:
    """An onnxruntime session on one intra-op thread (small models run fastest that way; cameras
    run in parallel instead)."""
    if not path.is_file():
        raise ModelError(f"{what} model {path}: no such file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for every kind of bad file
        raise ModelError(f"{what} model {path}: not a loadable ONNX model ({exc})") from None


def _dims(shape: list[Any]) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in shape]


@dataclass
class Recognizer:
    """A CTC text-line recogniser: input ``[N, 3, H, W]`` (H fixed), output ``[N, T, C]`` class
    probabilities, ``C`` = blank + the character list (+ a trailing space, PaddleOCR style)."""

    path: Path
    session: ort.InferenceSession
    input_name: str
    height: int
    characters: list[str]  # index -> character ("" for blank)

    @classmethod
    def load(cls, path: Path | None, charset_path: Path | None = None) -> Recognizer:
        path = resolve(path, DEFAULT_REC_MODEL)
        return cls.from_session(path, session(path, "recognition"), charset_path)

    @classmethod
    def from_session(
        cls, path: Path, sess: ort.InferenceSession, charset_path: Path | None
    ) -> Recognizer:
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        where = f"recognition model {path}"
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"{where}: expected one input and one output (a CTC recogniser), got "
                f"{len(inputs)} inputs and {len(outputs)} outputs"
            )
        shape = _dims(inputs[0].shape)
        if len(shape) != 4 or shape[1] != 3 or shape[2] is None:
            raise ModelError(
                f"{where}: input must be [N, 3, H, W] with a fixed height (a CTC recogniser) "
                f"or [N, H, W, C] uint8 (a slot reader, fast-plate-ocr style), "
                f"got {inputs[0].shape} {inputs[0].type}"
            )
        out = _dims(outputs[0].shape)
        if len(out) != 3 or out[2] is None:
            raise ModelError(
                f"{where}: output must be [N, T, classes] with a fixed class count, "
                f"got {outputs[0].shape}"
            )
        if charset_path is not None:
            try:
                chars = charset_path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ModelError(f"character list {charset_path}: {exc.strerror}") from None
        else:
            meta = sess.get_modelmeta().custom_metadata_map
            if "character" not in meta:
                raise ModelError(
                    f"{where}: no character list in the model's metadata; set lpr.rec_charset "
                    "to its dictionary file (one character a line)"
                )
            chars = meta["character"].splitlines()
        classes = out[2]
        # PaddleOCR: blank first, the list, then a space.
        table = ["", *chars, " "]
        if len(table) != classes and len(table) - 1 != classes:
            raise ModelError(
                f"{where}: {classes} output classes do not fit a character list of "
                f"{len(chars)} (expected {len(chars) + 1} or {len(chars) + 2})"
            )
        return cls(path, sess, inputs[0].name, int(shape[2]), table[:classes])

    def run(self, batch: FloatArray) -> FloatArray:
        out = self.session.run(None, {self.input_name: batch})[0]
        return np.asarray(out, dtype=np.float32)


@dataclass
class SlotReader:
    """A fixed-slot plate reader (fast-plate-ocr style): input ``[N, H, W, C]`` uint8 (the whole
    plate resized, C = 1 grey or 3 RGB, no other preprocessing), output ``[N, slots, A]`` or
    ``[N, slots * A]``: per slot, probabilities over the alphabet's ``A`` characters, the pad
    character (``_``) after the plate's end."""

    path: Path
    session: ort.InferenceSession
    input_name: str
    output_index: int
    height: int
    width: int
    channels: int
    batch: int | None  # a fixed batch size, or None
    slots: int
    alphabet: str

    @classmethod
    def from_session(
        cls, path: Path, sess: ort.InferenceSession, alphabet: str | None
    ) -> SlotReader:
        where = f"recognition model {path}"
        inputs = sess.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{where}: expected one image input, got {len(inputs)}")
        shape = _dims(inputs[0].shape)
        if (
            len(shape) != 4
            or shape[1] is None
            or shape[2] is None
            or shape[3] not in (1, 3)
            or inputs[0].type != "tensor(uint8)"
        ):
            raise ModelError(
                f"{where}: a slot reader's input must be [N, H, W, C] uint8 with fixed H and W "
                f"and C = 1 or 3, got {inputs[0].shape} {inputs[0].type}"
            )
        if alphabet is None:
            raise ModelError(
                f"{where}: a slot reader (uint8 [N, H, W, C] input) needs its alphabet: set "
                f"lpr.rec_alphabet (fast-plate-ocr's global models: {FAST_PLATE_OCR_ALPHABET!r})"
            )
        if len(set(alphabet)) != len(alphabet) or len(alphabet) < 2:
            raise ModelError(
                f"lpr.rec_alphabet {alphabet!r}: characters must be distinct (at least two)"
            )
        size = len(alphabet)
        outputs = [_dims(o.shape) for o in sess.get_outputs()]
        for index, out in enumerate(outputs):
            if len(out) == 3 and out[1] is not None and out[2] == size:
                slots = out[1]
            elif len(out) == 2 and out[1] is not None and out[1] % size == 0:
                slots = out[1] // size
            else:
                continue
            if slots < PLATE_LENGTH:
                raise ModelError(
                    f"{where}: {slots} slots of {size} characters: a plate has {PLATE_LENGTH}"
                )
            return cls(
                path, sess, inputs[0].name, index, shape[1], shape[2], shape[3],
                shape[0], slots, alphabet,
            )  # fmt: skip
        got = [o.shape for o in sess.get_outputs()]
        raise ModelError(
            f"{where}: no output fits an alphabet of {size} characters (lpr.rec_alphabet): "
            f"expected [N, slots, {size}] or [N, slots x {size}], got {got}"
        )

    def run(self, batch: Image) -> FloatArray:
        """``[N, slots, A]`` probabilities for a ``[N, H, W, C]`` batch."""
        step = self.batch or len(batch)
        parts = []
        for i in range(0, len(batch), step):
            part = batch[i : i + step]
            if len(part) < step:  # a fixed batch size: pad with blank images
                pad = np.zeros((step - len(part), *part.shape[1:]), np.uint8)
                out = self._run(np.concatenate([part, pad]))[: len(part)]
            else:
                out = self._run(part)
            parts.append(out)
        return np.concatenate(parts).reshape(len(batch), self.slots, len(self.alphabet))

    def _run(self, batch: Image) -> FloatArray:
        out = self.session.run(None, {self.input_name: batch})[self.output_index]
        return np.asarray(out, dtype=np.float32)


PlateModel = Recognizer | SlotReader


def load_recognizer(
    path: Path | None, charset_path: Path | None = None, alphabet: str | None = None
) -> PlateModel:
    """The reader at ``path`` (PP-OCRv6 by default), its kind told by its input: float
    ``[N, 3, H, W]`` is a CTC recogniser, uint8 ``[N, H, W, C]`` a slot reader."""
    path = resolve(path, DEFAULT_REC_MODEL)
    sess = session(path, "recognition")
    inputs = sess.get_inputs()
    slots = len(inputs) == 1 and inputs[0].type == "tensor(uint8)"
    if slots:
        if charset_path is not None:
            raise ModelError(
                f"recognition model {path} is a slot reader (uint8 input): it takes "
                "lpr.rec_alphabet, not lpr.rec_charset"
            )
        return SlotReader.from_session(path, sess, alphabet)
    if alphabet is not None:
        raise ModelError(
            f"recognition model {path} is not a slot reader (its input is not uint8 "
            "[N, H, W, C]): lpr.rec_alphabet applies to slot readers only; a CTC model's "
            "characters come from its metadata or lpr.rec_charset"
        )
    return Recognizer.from_session(path, sess, charset_path)


YoloLayout = Literal["yolov5", "yolov8"]
_LAYOUTS = (
    "[1, N, 5 + classes] (YOLOv5/v7: cx, cy, w, h, objectness, class scores) or "
    "[1, 4 + classes, N] (YOLOv8/v11: cx, cy, w, h, class scores), the box axis N the longer"
)


def _yolo_layout(shape: list[int | None]) -> tuple[YoloLayout, int] | None:
    """The layout of a YOLO output shape and its class count; None when it fits neither. The
    box axis is told from the feature axis by length (thousands of boxes, a few features)."""
    if len(shape) != 3 or shape[0] not in (1, None):
        return None
    a, b = shape[1], shape[2]
    if a is not None and (b is None or a < b):
        return ("yolov8", a - 4) if a >= 5 else None
    if b is not None and (a is None or b < a):
        return ("yolov5", b - 5) if b >= 6 else None
    return None


@dataclass
class Detector:
    """A YOLO plate detector: input ``[1, 3, H, W]`` float (RGB, 0–1, letterboxed; H/W fixed,
    or dynamic and then ``DET_DYNAMIC_SIZE``), an output in one of ``_LAYOUTS`` with boxes in
    the input's pixels. Every class counts as a plate."""

    path: Path
    session: ort.InferenceSession
    input_name: str
    input_dtype: type[np.floating[Any]]
    width: int
    height: int
    output_index: int
    layout: YoloLayout
    classes: int
    conf: float = 0.4
    iou: float = 0.45

    @classmethod
    def load(cls, path: Path, conf: float = 0.4, iou: float = 0.45) -> Detector:
        sess = session(path, "detection")
        where = f"detection model {path}"
        inputs = sess.get_inputs()
        if len(inputs) != 1:
            raise ModelError(
                f"{where}: expected one image input [1, 3, H, W], got {len(inputs)} inputs"
            )
        shape = _dims(inputs[0].shape)
        dtypes: dict[str, type[np.floating[Any]]] = {
            "tensor(float)": np.float32,
            "tensor(float16)": np.float16,
        }
        if (
            len(shape) != 4
            or shape[0] not in (1, None)
            or shape[1] != 3
            or inputs[0].type not in dtypes
        ):
            raise ModelError(
                f"{where}: input must be a float image [1, 3, H, W] (3 channels), "
                f"got {inputs[0].shape} {inputs[0].type}"
            )
        for index, out in enumerate(sess.get_outputs()):
            fit = _yolo_layout(_dims(out.shape))
            if fit is not None and out.type in dtypes:
                return cls(
                    path, sess, inputs[0].name, dtypes[inputs[0].type],
                    shape[3] or DET_DYNAMIC_SIZE, shape[2] or DET_DYNAMIC_SIZE,
                    index, fit[0], fit[1], conf, iou,
                )  # fmt: skip
        got = [o.shape for o in sess.get_outputs()]
        raise ModelError(f"{where}: no output fits a YOLO layout: expected {_LAYOUTS}, got {got}")

    def letterbox(self, frame: Image) -> tuple[FloatArray, float, tuple[int, int]]:
        """The frame as the model's input batch, with the scale and (left, top) padding that
        map its pixels back to the frame's."""
        h0, w0 = frame.shape[:2]
        r = min(self.width / w0, self.height / h0)
        nw, nh = max(1, round(w0 * r)), max(1, round(h0 * r))
        dx, dy = (self.width - nw) // 2, (self.height - nh) // 2
        canvas = np.full((self.height, self.width, 3), DET_PAD_VALUE, np.uint8)
        interp = cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR
        canvas[dy : dy + nh, dx : dx + nw] = cv2.resize(frame, (nw, nh), interpolation=interp)
        rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
        batch = (rgb.transpose(2, 0, 1)[None] / np.float32(255.0)).astype(self.input_dtype)
        return batch, r, (dx, dy)

    def detect(self, frame: Image, limit: int) -> list[tuple[Box, float]]:
        """Plate boxes on a BGR frame (frame pixels, clipped to it) with their scores, best
        first: those scoring at least ``conf``, overlaps above ``iou`` suppressed."""
        batch, r, (dx, dy) = self.letterbox(frame)
        out = self.session.run(None, {self.input_name: batch})[self.output_index]
        rows = np.asarray(out, dtype=np.float32)[0]
        if self.layout == "yolov8":
            rows = rows.T
            scores = rows[:, 4:].max(axis=1)
        else:
            scores = rows[:, 4] * rows[:, 5:].max(axis=1)
        keep = scores >= self.conf
        rows, scores = rows[keep], scores[keep]
        if not len(rows):
            return []
        h0, w0 = frame.shape[:2]
        x0 = np.clip((rows[:, 0] - rows[:, 2] / 2 - dx) / r, 0, w0)
        y0 = np.clip((rows[:, 1] - rows[:, 3] / 2 - dy) / r, 0, h0)
        x1 = np.clip((rows[:, 0] + rows[:, 2] / 2 - dx) / r, 0, w0)
        y1 = np.clip((rows[:, 1] + rows[:, 3] / 2 - dy) / r, 0, h0)
        boxes = [
            [float(a), float(b), float(c - a), float(d - b)]
            for a, b, c, d in zip(x0, y0, x1, y1, strict=True)
        ]
        picked = cv2.dnn.NMSBoxes(boxes, scores.tolist(), self.conf, self.iou)
        found = []
        for i in sorted(np.asarray(picked).reshape(-1).tolist(), key=lambda i: -scores[i]):
            x, y, w, h = (round(v) for v in boxes[i])
            if w >= 2 and h >= 2:
                found.append(((x, y, w, h), float(scores[i])))
        return found[:limit]


def load_models(cfg: LprConfig) -> tuple[PlateModel, Detector | None]:
    """The reader and (when ``lpr.det_model`` is set) the detector a camera's config names."""
    reader = load_recognizer(cfg.rec_model, cfg.rec_charset, cfg.rec_alphabet)
    detector = None
    if cfg.det_model is not None:
        detector = Detector.load(cfg.det_model, cfg.det_conf, cfg.det_iou)
    return reader, detector


def _stamp(path: Path | None) -> tuple[str, int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _check(
    rec: tuple[str, int, int] | None,
    charset: tuple[str, int, int] | None,
    alphabet: str | None,
) -> str | None:
    try:
        load_recognizer(
            Path(rec[0]) if rec else None, Path(charset[0]) if charset else None, alphabet
        )
    except ModelError as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=16)
def _check_det(det: tuple[str, int, int]) -> str | None:
    try:
        Detector.load(Path(det[0]))
    except ModelError as exc:
        return str(exc)
    return None


def check_rec_model(
    path: Path | None, charset_path: Path | None = None, alphabet: str | None = None
) -> None:
    """Load the recognition model once to check it (config validation: a bad model is a clear
    error at start-up and a rejected edit on reload). Cached per file version."""
    error = _check(_stamp(path), _stamp(charset_path), alphabet)
    if error:
        raise ModelError(error)


def check_det_model(path: Path) -> None:
    """``check_rec_model`` for the plate detector."""
    stamp = _stamp(path)
    assert stamp is not None
    error = _check_det(stamp)
    if error:
        raise ModelError(error)
