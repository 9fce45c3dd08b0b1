"""Plate recognition accuracy and speed on labelled synthetic scenes (or a folder of labelled
images from real cameras).

Synthetic: passages of one vehicle each (varied fonts, plate sizes, camera roll and skew, blur,
noise, night, JPEG, distractor text; Mercosul and old plates), ``--frames`` frames per passage
as an LPR camera at 5 fps would sample them, and plate-free frames (signs, cars with an empty
plate holder). Each frame goes through the agent's ``PlateReader`` and each passage through its
``PlateTracker``, on one thread (one onnxruntime intra-op thread, OpenCV single-threaded).

Real footage: ``--labelled DIR`` with ``DIR/labels.csv`` (``file,plate,vehicle``; an empty plate
marks a plate-free frame; rows sharing ``vehicle`` are one passage, in file order).

End to end: ``--e2e`` runs the whole agent against the RTSP test camera (the looping scene with
its ground truth) with ``--cameras`` LPR cameras and ``--record`` recording-only ones for
``--seconds``, and scores the reads in its SQLite store against the truth (each car once per
camera, no phantom reads) and the CPU it used (agent process and its ffmpegs).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import SecretStr

from agent.config import AgentConfig, CameraConfig, CentralConfig, LprConfig, RecordConfig
from agent.lpr.models import Detector, load_recognizer
from agent.lpr.recognizer import PlateReader
from agent.lpr.tracker import PlateTracker
from agent.service import Agent
from bench.recording import _comm, child_pids, proc_cpu_s
from devstack import camera, scene
from devstack.procs import free_port
from devstack.scene import bench_empty_frames, bench_passages
from devstack.stack import default_state_dir

FRAME_INTERVAL_MS = 200  # 5 fps


@dataclass
class Sample:
    """A passage to score: its truth plate ('' for plate-free frames) and frames."""

    vehicle: str
    plate: str
    label: str  # e.g. "day/mercosul"
    frames: list[np.ndarray]


@dataclass
class Score:
    plate_frames: int = 0
    plate_frames_exact: int = 0
    chars_right: int = 0
    vehicles: int = 0
    vehicles_exact: int = 0
    vehicles_wrong: int = 0  # a passage with another text
    vehicles_missed: int = 0
    vehicles_repeated: int = 0  # more than one passage for one vehicle
    empty_frames: int = 0
    false_reads: int = 0  # plate reads on plate-free frames
    false_passages: int = 0  # passages the tracker would store from plate-free frames
    frame_ms: list[float] = field(default_factory=list)
    # CPU time per frame of reading and tracking only (not of drawing the scenes): on a busy
    # machine the honest "one core" figure, where wall time also counts waiting for a core.
    cpu_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    by_label: dict[str, list[int]] = field(default_factory=dict)  # label -> [exact, total]


def synthetic(seed: int, passages: int, frames: int, empty: int) -> Iterator[Sample]:
    for p in bench_passages(seed, passages, frames=frames):
        yield Sample(str(p.vehicle_id), p.plate, f"{p.conditions.label()}/{p.fmt}", p.frames)
    for i, (cond, frame) in enumerate(bench_empty_frames(seed + 1, empty)):
        yield Sample(f"empty-{i}", "", f"{cond.label()}/empty", [frame])


def labelled(folder: Path) -> Iterator[Sample]:
    """Passages from ``labels.csv`` (file, plate, vehicle)."""
    with (folder / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups: dict[str, list[dict[str, str]]] = {}
    for i, row in enumerate(rows):
        key = row.get("vehicle") or f"row-{i}"
        groups.setdefault(key, []).append(row)
    for key, group in groups.items():
        frames = []
        for row in group:
            img = cv2.imread(str(folder / row["file"]), cv2.IMREAD_COLOR)
            if img is None:
                raise SystemExit(f"{folder / row['file']}: not a readable image")
            frames.append(img)
        plate = (group[0].get("plate") or "").strip().upper()
        yield Sample(key, plate, "labelled" if plate else "labelled/empty", frames)


def chars_matching(truth: str, read: str) -> int:
    return sum(a == b for a, b in zip(truth, read, strict=False))


def run(samples: Iterable[Sample], reader: PlateReader, progress: bool) -> Score:
    score = Score()
    for n, sample in enumerate(samples, start=1):
        tracker = PlateTracker()
        passages = []
        for i, frame in enumerate(sample.frames):
            started, cpu = time.perf_counter(), time.thread_time()
            result = reader.read(frame)
            passages += tracker.update(i * FRAME_INTERVAL_MS, result.reads)
            score.frame_ms.append((time.perf_counter() - started) * 1000)
            score.cpu_ms.append((time.thread_time() - cpu) * 1000)
            plates = [r.plate for r in result.reads]
            if not sample.plate:
                score.empty_frames += 1
                score.false_reads += len(plates)
                score.errors.update(f"false {p}" for p in plates)
                continue
            score.plate_frames += 1
            score.plate_frames_exact += sample.plate in plates
            score.chars_right += max((chars_matching(sample.plate, p) for p in plates), default=0)
        passages += tracker.flush()
        if not sample.plate:
            score.false_passages += len(passages)
            continue
        score.vehicles += 1
        texts = [p.plate for p in passages]
        exact = texts == [sample.plate]
        score.vehicles_exact += exact
        score.vehicles_missed += not texts
        score.vehicles_repeated += texts.count(sample.plate) > 1
        wrong = [t for t in texts if t != sample.plate]
        score.vehicles_wrong += bool(wrong)
        score.errors.update(f"{sample.plate} read {t}" for t in wrong)
        if not texts:
            score.errors[f"{sample.plate} missed ({sample.label})"] += 1
        tally = score.by_label.setdefault(sample.label, [0, 0])
        tally[0] += exact
        tally[1] += 1
        if progress and n % 50 == 0:
            print(f"  {n} samples...", file=sys.stderr)
    return score


def _is_sampler(pid: int) -> bool:
    """An LPR frame sampler's ffmpeg (not a recorder's)."""
    try:
        return b"image2pipe" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


async def _e2e_agent(url: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The agent with LPR and recording cameras on one RTSP URL for ``args.seconds``."""
    cameras: dict[str, CameraConfig] = {}
    for i in range(args.cameras + args.record):
        lpr = LprConfig(enabled=True, fps=args.fps) if i < args.cameras else LprConfig()
        cameras[f"{'lpr' if i < args.cameras else 'rec'}{i:02d}"] = CameraConfig(
            id=uuid.uuid4(), name=f"bench {i}", url=url, lpr=lpr,
            record=RecordConfig(segment_seconds=10, thumbnail_seconds=0),
        )  # fmt: skip
    config = AgentConfig(
        agent_id=uuid.uuid4(),
        city_id=uuid.uuid4(),
        data_dir=work / "agent",
        central=CentralConfig(
            api_url=f"http://127.0.0.1:{free_port()}/",
            amqp_url=SecretStr(f"amqp://bench:bench@127.0.0.1:{free_port()}/"),
            token=SecretStr("bench"),
        ),
        cameras=cameras,
    )
    agent = Agent(config)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(5)  # connect, load models, first frames: not measured
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = {p: proc_cpu_s(p) for p in child_pids() if _comm(p) == "ffmpeg"}
    await asyncio.sleep(args.seconds)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    kids1 = {p: proc_cpu_s(p) for p in child_pids() if _comm(p) == "ffmpeg"}
    lpr_pids = {p for p in kids1 if _is_sampler(p)}
    status = agent.lpr.status()
    stop.set()
    await asyncio.wait_for(task, 60)
    self_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    ffmpeg = {p: kids1[p] - kids0.get(p, 0.0) for p in kids1}
    return {
        "status": status,
        "self_cpu_s": self_cpu,
        "lpr_ffmpeg_cpu_s": sum(v for p, v in ffmpeg.items() if p in lpr_pids),
        "rec_ffmpeg_cpu_s": sum(v for p, v in ffmpeg.items() if p not in lpr_pids),
        "ids": {key: str(cam.id) for key, cam in cameras.items()},
    }


def e2e(args: argparse.Namespace) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="gtv-bench-lpr-"))
    video = scene.make_scene_video(
        default_state_dir() / "cache" / "scenes", seconds=10.0, width=1280, height=720
    )
    plates = sorted(v["plate"] for v in json.loads(video.truth.read_text())["vehicles"])
    port = free_port()
    cam = camera.start_camera(video.video, port, state / "camera.log")
    try:
        url = camera.rtsp_url(port)
        camera.wait_camera_ready(url, 30.0, log=state / "camera.log", process=cam)
        run = asyncio.run(_e2e_agent(url, args, state))
        conn = sqlite3.connect(state / "agent" / "agent.sqlite3")
        try:
            rows = conn.execute("SELECT camera_id, plate FROM plate_reads").fetchall()
        finally:
            conn.close()
    finally:
        cam.terminate()
        cam.wait(15)
        shutil.rmtree(state, ignore_errors=True)
    exact = phantoms = repeated = 0
    for key, cam_id in run["ids"].items():
        if not key.startswith("lpr"):
            continue
        read = sorted(p for c, p in rows if c == cam_id)
        exact += sum(p in read for p in plates)
        phantoms += sum(p not in plates for p in read)
        repeated += len(read) - len(set(read))
        st = run["status"][key]
        print(f"  {key}: read {len(set(read) & set(plates))}/{len(plates)} cars, "
              f"{sum(p not in plates for p in read)} phantom; frames in {st['frames_in']}, "
              f"read {st['frames_read']}, dropped {st['frames_dropped']}, "
              f"plates coasted {st['plates_coasted']}")  # fmt: skip
    seconds = args.seconds
    lpr_frames = sum(st["frames_read"] for st in run["status"].values())
    cpu = run["self_cpu_s"] + run["lpr_ffmpeg_cpu_s"] + run["rec_ffmpeg_cpu_s"]
    result = {
        "e2e_cameras": args.cameras,
        "e2e_recording": args.record,
        "e2e_seconds": seconds,
        "e2e_exact_vehicle": round(exact / (len(plates) * args.cameras), 4),
        "e2e_phantoms": phantoms,
        "e2e_repeated": repeated,
        "e2e_frames_read": lpr_frames,
        "e2e_frames_dropped": sum(st["frames_dropped"] for st in run["status"].values()),
        "e2e_plates_coasted": sum(st["plates_coasted"] for st in run["status"].values()),
        "e2e_cores_used": round(cpu / seconds, 2),
        "e2e_cores_python": round(run["self_cpu_s"] / seconds, 2),
        "e2e_cores_lpr_ffmpeg": round(run["lpr_ffmpeg_cpu_s"] / seconds, 2),
        "e2e_cores_recording": round(run["rec_ffmpeg_cpu_s"] / seconds, 2),
    }
    print(f"end to end: {result}")
    return result


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.lpr", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="150 passages, 400 plate-free frames")
    ap.add_argument("--passages", type=int, help="vehicles (default 1000; 150 with --quick)")
    ap.add_argument("--empty", type=int, help="plate-free frames (default 2000; 400 --quick)")
    ap.add_argument("--frames", type=int, default=5, help="frames per passage (5 fps, ~1 s)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--labelled", type=Path, help="folder with labels.csv (real footage)")
    ap.add_argument(
        "--rec-model", type=Path, help="another reading model (ONNX): CTC or a slot reader"
    )
    ap.add_argument("--rec-charset", type=Path, help="a CTC model's character list, one a line")
    ap.add_argument("--rec-alphabet", help="a slot reader's alphabet ('_' the pad)")
    ap.add_argument("--det-model", type=Path, help="a YOLO plate detector (ONNX)")
    ap.add_argument("--det-conf", type=float, default=0.4, help="--det-model: score threshold")
    ap.add_argument("--e2e", action="store_true", help="also run the agent on the test camera")
    ap.add_argument("--cameras", type=int, default=4, help="--e2e: LPR cameras")
    ap.add_argument("--record", type=int, default=16, help="--e2e: recording-only cameras")
    ap.add_argument("--seconds", type=int, help="--e2e: measured seconds (60; 30 --quick)")
    ap.add_argument("--fps", type=float, default=5.0, help="--e2e: LPR frames per second")
    args = ap.parse_args(argv)

    cv2.setNumThreads(1)
    detector = Detector.load(args.det_model, args.det_conf) if args.det_model else None
    reader = PlateReader(
        load_recognizer(args.rec_model, args.rec_charset, args.rec_alphabet), detector
    )
    passages = args.passages or (150 if args.quick else 1000)
    empty = args.empty if args.empty is not None else (400 if args.quick else 2000)
    if args.labelled:
        samples: Iterable[Sample] = labelled(args.labelled)
        source = str(args.labelled)
    else:
        samples = synthetic(args.seed, passages, args.frames, empty)
        source = f"synthetic seed {args.seed}"
    # warm-up: the first run of a model allocates
    reader.read(np.full((720, 1280, 3), 127, np.uint8))
    wall0 = time.perf_counter()
    score = run(samples, reader, progress=True)
    wall_s, cpu_s = time.perf_counter() - wall0, sum(score.cpu_ms) / 1000
    frames = len(score.frame_ms)

    def ratio(a: int, b: int) -> float:
        return round(a / b, 4) if b else 0.0

    print(f"source: {source}; {score.vehicles} vehicles, {frames} frames")
    print(f"exact per plate (frame): {ratio(score.plate_frames_exact, score.plate_frames):.1%}")
    print(f"exact per vehicle:       {ratio(score.vehicles_exact, score.vehicles):.1%}")
    print(f"  missed {score.vehicles_missed}, wrong {score.vehicles_wrong}, "
          f"repeated {score.vehicles_repeated}")  # fmt: skip
    for label, (ok, total) in sorted(score.by_label.items()):
        print(f"  {label:<16} {ok}/{total} exact ({ratio(ok, total):.1%})")
    print(f"char accuracy:           {ratio(score.chars_right, 7 * score.plate_frames):.1%}")
    false_per_1000 = (
        round(1000 * score.false_reads / score.empty_frames, 2) if score.empty_frames else 0.0
    )
    print(f"false reads:             {score.false_reads} in {score.empty_frames} plate-free frames")
    p50, p95 = percentile(score.frame_ms, 0.5), percentile(score.frame_ms, 0.95)
    cpu50, cpu95 = percentile(score.cpu_ms, 0.5), percentile(score.cpu_ms, 0.95)
    fps_core = frames / cpu_s if cpu_s else 0.0
    print(f"per frame (one thread):  p50 {p50:.1f} ms, p95 {p95:.1f} ms wall; "
          f"p50 {cpu50:.1f} ms, p95 {cpu95:.1f} ms CPU")  # fmt: skip
    print(f"throughput:              {fps_core:.1f} frames/s per core")
    for err, count in score.errors.most_common(8):
        print(f"  error x{count}: {err}")
    result = {
        "bench": "lpr",
        "source": source,
        "vehicles": score.vehicles,
        "frames": frames,
        "exact_plate": ratio(score.plate_frames_exact, score.plate_frames),
        "exact_vehicle": ratio(score.vehicles_exact, score.vehicles),
        "vehicles_missed": score.vehicles_missed,
        "vehicles_wrong": score.vehicles_wrong,
        "vehicles_repeated": score.vehicles_repeated,
        "char_accuracy": ratio(score.chars_right, 7 * score.plate_frames),
        "empty_frames": score.empty_frames,
        "false_reads": score.false_reads,
        "false_per_1000": false_per_1000,
        "false_passages": score.false_passages,
        "p50_ms": round(p50, 1),
        "p95_ms": round(p95, 1),
        "mean_ms": round(statistics.fmean(score.frame_ms), 1) if frames else 0.0,
        "p50_cpu_ms": round(cpu50, 1),
        "p95_cpu_ms": round(cpu95, 1),
        "frames_per_s_per_core": round(fps_core, 1),
        "wall_s": round(wall_s, 1),
        "model": reader.rec.path.name,
        "det_model": detector.path.name if detector else None,
        "quick": args.quick,
    }
    if args.e2e:
        args.seconds = args.seconds or (30 if args.quick else 60)
        logging.basicConfig(level=logging.ERROR, stream=sys.stderr)  # the relay's retries
        result |= e2e(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
