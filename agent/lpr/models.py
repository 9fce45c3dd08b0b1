"""ONNX models for plate recognition: the defaults shipped in the ``rapidocr`` wheel (PP-OCRv6,
Apache-2.0) or models the config names by path. Signatures are checked at load, so a wrong or
missing file is a clear error at start-up, never a crash on the first frame."""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

# Inside the rapidocr wheel (rapidocr/models/), nothing is downloaded.
DEFAULT_REC_MODEL = "PP-OCRv6_rec_small.onnx"

FloatArray = npt.NDArray[np.float32]


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
        sess = session(path, "recognition")
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        where = f"recognition model {path}"
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{where}: expected one input and one output (a CTC recogniser)")
        shape = _dims(inputs[0].shape)
        if len(shape) != 4 or shape[1] != 3 or shape[2] is None:
            raise ModelError(
                f"{where}: input must be [N, 3, H, W] with a fixed height, got {inputs[0].shape}"
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


def _stamp(path: Path | None) -> tuple[str, int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _check(rec: tuple[str, int, int] | None, charset: tuple[str, int, int] | None) -> str | None:
    try:
        Recognizer.load(Path(rec[0]) if rec else None, Path(charset[0]) if charset else None)
    except ModelError as exc:
        return str(exc)
    return None


def check_rec_model(path: Path | None, charset_path: Path | None = None) -> None:
    """Load the recognition model once to check it (config validation: a bad model is a clear
    error at start-up and a rejected edit on reload). Cached per file version."""
    error = _check(_stamp(path), _stamp(charset_path))
    if error:
        raise ModelError(error)
