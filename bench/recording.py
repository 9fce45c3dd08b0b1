"""Agent recording against plain ``ffmpeg -c copy`` segmenting of the same streams.

For each stream count (8, 16, 32 by default) the same camera streams are recorded for a fixed
time by bare ffmpeg and by the agent's recorder, alternately; prints CPU seconds per
stream-hour for both, their ratio, resident memory and segment gaps. Last line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import CameraConfig, RecordConfig
from agent.segmenter import CameraRecorder
from agent.store import Store
from devstack import camera, scene
from devstack.procs import free_port
from devstack.stack import default_state_dir

SEGMENT_SECONDS = 2
GAP_TOLERANCE_MS = 100
SCENE_SECONDS = 10.0  # the camera loops the file seamlessly; a short scene renders fast
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    """CPU and output of one timed run of N recorders (baseline or agent)."""

    kind: str
    streams: int
    seconds: int
    # ffmpeg CPU read from /proc just before the stop signal: ffmpeg's share, without shutdown.
    ffmpeg_live_cpu_s: float = 0.0
    # Every child reaped during the phase (ffmpeg incl. shutdown, ffprobe), from RUSAGE_CHILDREN.
    children_cpu_s: float = 0.0
    # This Python process (event loop, hashing threads, SQLite thread); counted for the agent only.
    self_cpu_s: float = 0.0
    segments: int = 0
    per_stream: dict[str, int] = field(default_factory=dict)
    runs: int = 0  # agent: RTSP sessions (more than one per stream means a restart)
    failed: int = 0  # baseline: ffmpeg processes that exited before the stop
    gaps: int = 0
    gap_details: list[str] = field(default_factory=list)
    # Memory (PSS) just before the stop: every ffmpeg of the phase, and (agent only) the
    # process hosting the recorders (the agent's Python side: loop, SQLite, hashing).
    ffmpeg_rss_mb: float = 0.0
    python_rss_mb: float = 0.0

    @property
    def rss_mb(self) -> float:
        return self.ffmpeg_rss_mb + (self.python_rss_mb if self.kind == "agent" else 0.0)

    @property
    def cpu_s(self) -> float:
        # The bench process only sleeps during the baseline: its CPU is not ffmpeg's.
        return self.children_cpu_s + (self.self_cpu_s if self.kind == "agent" else 0.0)

    @property
    def stream_minutes(self) -> float:
        return self.streams * self.seconds / 60


def _rusage_s(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces or parentheses: the fields start after the last ')'.
    return stat[stat.rindex(")") + 2 :].split()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live (or zombie) process, all threads; 0 once it is reaped."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def child_pids() -> set[int]:
    """PIDs whose parent is this process, zombies included (they are not reaped yet)."""
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) and fields[1] == me:
            found.add(int(entry))
    return found


def rss_mb(pid: int) -> float:
    """Proportional set size of a live process in MiB (0 once it is gone): resident memory
    with shared pages (ffmpeg's libraries) split between the processes sharing them, so that
    summing over N ffmpegs does not count the libraries N times. VmRSS where PSS is missing."""
    for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
        except OSError:
            continue
    return 0.0


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def baseline_command(url: str, out_dir: Path) -> list[str]:
    """Plain ffmpeg segmenting, with the agent's log flags: only the agent's extra work differs."""
    return [
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
        "-rtsp_transport", "tcp", "-i", url,
        "-map", "0:v:0", "-c", "copy",
        "-f", "segment", "-segment_time", str(SEGMENT_SECONDS), "-reset_timestamps", "1",
        "-segment_format", "mp4", str(out_dir / "%06d.mp4"),
    ]  # fmt: skip


def run_baseline(url: str, streams: int, seconds: int, work: Path) -> Phase:
    phase = Phase("baseline", streams, seconds)
    keep = child_pids()  # the camera and the holder: not part of the measurement
    ch0 = _rusage_s(resource.RUSAGE_CHILDREN)
    procs: list[subprocess.Popen[bytes]] = []
    errlog = (work / "baseline-stderr.log").open("ab")
    try:
        for i in range(streams):
            out = work / f"s{i:02d}"
            out.mkdir(parents=True)
            procs.append(
                subprocess.Popen(
                    baseline_command(url, out),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errlog,
                )
            )
        time.sleep(seconds)
        phase.ffmpeg_live_cpu_s = sum(proc_cpu_s(p.pid) for p in procs)
        phase.ffmpeg_rss_mb = sum(rss_mb(p.pid) for p in procs)
        phase.failed = sum(p.poll() is not None for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()  # SIGTERM: ffmpeg closes its last segment and exits
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        errlog.close()
    _wait_reaped_sync(keep)
    phase.children_cpu_s = _rusage_s(resource.RUSAGE_CHILDREN) - ch0
    for i in range(streams):
        n = len(list((work / f"s{i:02d}").glob("*.mp4")))
        phase.per_stream[f"s{i:02d}"] = n
        phase.segments += n
    return phase


def _wait_reaped_sync(keep: set[int], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while child_pids() - keep and time.monotonic() < deadline:
        time.sleep(0.05)


async def _wait_reaped(keep: set[int], timeout_s: float = 15.0) -> None:
    # asyncio reaps its children on watcher threads; a cancelled probe's ffprobe still runs
    # to its end. Only reaped children are in RUSAGE_CHILDREN, so wait for all of them.
    left = child_pids() - keep
    for _ in range(int(timeout_s / 0.05)):
        if not (left := child_pids() - keep):
            break
        await asyncio.sleep(0.05)
    if left:
        print(f"warning: children not reaped after {timeout_s:.0f} s: {sorted(left)}")


async def _agent(url: str, streams: int, seconds: int, work: Path, phase: Phase) -> None:
    store = Store(work / "agent.db")
    await store.open()
    try:
        recorders = [
            CameraRecorder(
                f"cam{i:02d}",
                CameraConfig(
                    id=uuid.uuid4(),
                    name=f"bench {i}",
                    url=url,
                    record=RecordConfig(segment_seconds=SEGMENT_SECONDS),
                ),
                store,
                work / "spool",
            )
            for i in range(streams)
        ]
        keep = child_pids()
        self0 = _rusage_s(resource.RUSAGE_SELF)
        ch0 = _rusage_s(resource.RUSAGE_CHILDREN)
        tasks = [asyncio.create_task(r.run()) for r in recorders]
        await asyncio.sleep(seconds)
        ffmpegs = [p for p in child_pids() - keep if _comm(p) == "ffmpeg"]
        phase.ffmpeg_live_cpu_s = sum(proc_cpu_s(p) for p in ffmpegs)
        phase.ffmpeg_rss_mb = sum(rss_mb(p) for p in ffmpegs)
        phase.python_rss_mb = rss_mb(os.getpid())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _wait_reaped(keep)
        # Hashing runs on the default executor: let an in-flight hash finish inside the window.
        await asyncio.get_running_loop().shutdown_default_executor()
        phase.self_cpu_s = _rusage_s(resource.RUSAGE_SELF) - self0
        phase.children_cpu_s = _rusage_s(resource.RUSAGE_CHILDREN) - ch0
        keys = {str(r.camera.id): r.key for r in recorders}
    finally:
        await store.close()
    _check_gaps(work / "agent.db", keys, phase)


def _check_gaps(db: Path, keys: dict[str, str], phase: Phase) -> None:
    """Within each run, every segment must start where the previous one ended."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT camera_id, run_id, seq, start_ms, duration_ms FROM segments "
            "ORDER BY camera_id, run_id, seq"
        ).fetchall()
    finally:
        conn.close()
    phase.per_stream = dict.fromkeys(sorted(keys.values()), 0)
    runs: set[str] = set()
    prev: tuple[str, int, int] | None = None  # run_id, seq, end_ms
    for camera_id, run_id, seq, start_ms, duration_ms in rows:
        key = keys[camera_id]
        phase.per_stream[key] += 1
        phase.segments += 1
        runs.add(run_id)
        if prev is not None and prev[0] == run_id:
            delta = start_ms - prev[2]
            if abs(delta) > GAP_TOLERANCE_MS:
                phase.gaps += 1
                phase.gap_details.append(f"{key} seq {prev[1]}->{seq}: {delta:+d} ms")
        prev = (run_id, seq, start_ms + duration_ms)
    phase.runs = len(runs)


def run_agent(url: str, streams: int, seconds: int, work: Path) -> Phase:
    phase = Phase("agent", streams, seconds)
    asyncio.run(_agent(url, streams, seconds, work, phase))
    return phase


def _per_hour(cpu_s: float, phase: Phase) -> float:
    return cpu_s / phase.stream_minutes * 60


def report(phase: Phase) -> None:
    p = phase
    print(
        f"{p.kind:8s} {p.streams} x {p.seconds} s: "
        f"{_per_hour(p.cpu_s, p):.1f} CPU s/stream-hour (total {p.cpu_s:.2f} s: "
        f"ffmpeg live {p.ffmpeg_live_cpu_s:.2f}, children reaped {p.children_cpu_s:.2f}"
        + (f", python {p.self_cpu_s:.2f}" if p.kind == "agent" else "")
        + f"); segments {p.segments}; RSS {p.rss_mb:.0f} MiB",
        flush=True,
    )
    if p.kind == "agent":
        # Children minus live ffmpeg = ffmpeg's own shutdown (validation runs in-process).
        other = p.children_cpu_s - p.ffmpeg_live_cpu_s
        per_seg = other / p.segments * 1000 if p.segments else 0.0
        print(
            f"         ffmpeg shutdown {other:.2f} s ({per_seg:.1f} ms/segment), "
            f"python RSS {p.python_rss_mb:.0f} MiB, "
            f"python {p.self_cpu_s / p.segments * 1000 if p.segments else 0.0:.1f} ms/segment; "
            f"runs {p.runs} for {p.streams} streams; gaps {p.gaps}",
            flush=True,
        )
        for line in p.gap_details[:10]:
            print(f"         gap {line}", flush=True)
    elif p.failed:
        print(f"         warning: {p.failed} ffmpeg exited before the stop", flush=True)
    print(f"         per stream: {sorted(p.per_stream.values())}", flush=True)


def _stream_counts(text: str) -> list[int]:
    counts = [int(x) for x in text.split(",") if x.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("stream counts are positive integers, e.g. 8,16,32")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="8 streams x 20 s at 1080p, one round")
    ap.add_argument(
        "--streams", type=_stream_counts, help="stream counts, comma-separated (default 8,16,32)"
    )
    ap.add_argument("--seconds", type=int, help="recording time per phase (default 60, quick 20)")
    ap.add_argument("--width", type=int, default=1920, help="scene width (default 1920)")
    ap.add_argument("--height", type=int, default=1080, help="scene height (default 1080)")
    ap.add_argument("--rounds", type=int, help="baseline+agent pairs, alternated (default 2/1)")
    args = ap.parse_args(argv)
    q = args.quick
    args.streams = args.streams or ([8] if q else [8, 16, 32])
    args.seconds = args.seconds or (20 if q else 60)
    args.rounds = args.rounds or (1 if q else 2)
    if args.seconds < 2 * SEGMENT_SECONDS or args.rounds < 1:
        ap.error(f"need --seconds >= {2 * SEGMENT_SECONDS}, --rounds >= 1")
    return args


def summary(streams: int, phases: list[Phase]) -> dict[str, Any]:
    """Figures for one stream count from its baseline and agent phases."""
    base = [p for p in phases if p.kind == "baseline"]
    agent = [p for p in phases if p.kind == "agent"]
    hours = sum(p.stream_minutes for p in agent) / 60
    base_rate = sum(p.cpu_s for p in base) / (sum(p.stream_minutes for p in base) / 60)
    agent_rate = sum(p.cpu_s for p in agent) / hours
    return {
        "streams": streams,
        "baseline_cpu_s_per_stream_hour": round(base_rate, 1),
        "agent_cpu_s_per_stream_hour": round(agent_rate, 1),
        "cpu_ratio_vs_ffmpeg": round(agent_rate / base_rate, 3) if base_rate else None,
        "baseline_rss_mb": round(max(p.rss_mb for p in base), 1),
        "agent_rss_mb": round(max(p.rss_mb for p in agent), 1),
        "agent_python_rss_mb": round(max(p.python_rss_mb for p in agent), 1),
        "agent_segments": sum(p.segments for p in agent),
        "baseline_segments": sum(p.segments for p in base),
        "baseline_failed": sum(p.failed for p in base),
        "agent_runs": sum(p.runs for p in agent),
        "gaps": sum(p.gaps for p in agent),
        "agent_ffmpeg_cpu_s_per_stream_hour": round(
            sum(p.ffmpeg_live_cpu_s for p in agent) / hours, 1
        ),
        "agent_python_cpu_s_per_stream_hour": round(sum(p.self_cpu_s for p in agent) / hours, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    resolution = f"{args.width}x{args.height}"
    state = Path(tempfile.mkdtemp(prefix="gtv-bench-recording-"))
    # Scene renders are deterministic: share the cache the test fixtures use.
    scene_dir = default_state_dir() / "cache" / "scenes"
    t0 = time.monotonic()
    video = scene.make_scene_video(
        scene_dir, seconds=SCENE_SECONDS, width=args.width, height=args.height
    )
    print(f"scene {video.video.name} ready in {time.monotonic() - t0:.1f} s", flush=True)
    port = free_port()
    cam = camera.start_camera(video.video, port, state / "camera.log")
    holder: subprocess.Popen[bytes] | None = None
    results: list[dict[str, Any]] = []
    try:
        url = camera.rtsp_url(port)
        camera.wait_camera_ready(url, 30.0, log=state / "camera.log", process=cam)
        # One client stays connected throughout: the shared media answers 503 while it is torn
        # down after its last client leaves, which would hit the next phase's connects.
        holder = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
             "-rtsp_transport", "tcp", "-i", url, "-map", "0:v:0", "-c", "copy", "-f", "null", "-"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(2)
        print(
            f"camera {url} (pid {cam.pid}), streams {args.streams} x {args.seconds} s "
            f"at {resolution}, {args.rounds} round(s), state {state}",
            flush=True,
        )
        for streams in args.streams:
            phases: list[Phase] = []
            for r in range(args.rounds):
                for kind in ("baseline", "agent"):
                    if holder.poll() is not None:
                        print("warning: the holder client exited; the camera may answer 503")
                    work = state / f"{streams}-{kind}-{r}"
                    work.mkdir()
                    run = run_baseline if kind == "baseline" else run_agent
                    phase = run(url, streams, args.seconds, work)
                    report(phase)
                    phases.append(phase)
                    shutil.rmtree(work, ignore_errors=True)  # 1080p segments add up quickly
                    time.sleep(1)
            results.append(summary(streams, phases))
            r0 = results[-1]
            print(
                f"{streams} streams: baseline {r0['baseline_cpu_s_per_stream_hour']} vs agent "
                f"{r0['agent_cpu_s_per_stream_hour']} CPU s/stream-hour, ratio "
                f"{r0['cpu_ratio_vs_ffmpeg']} (target <= 1.2), gaps {r0['gaps']}, "
                f"RSS agent {r0['agent_rss_mb']} MiB vs ffmpeg {r0['baseline_rss_mb']} MiB",
                flush=True,
            )
    finally:
        for proc in (holder, cam):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(state, ignore_errors=True)

    largest = max(results, key=lambda r: r["streams"])
    result: dict[str, Any] = {
        "bench": "recording",
        "streams": largest["streams"],
        "cpu_ratio_vs_ffmpeg": largest["cpu_ratio_vs_ffmpeg"],
        "gaps": sum(r["gaps"] for r in results),
        "agent_rss_mb": largest["agent_rss_mb"],
        "baseline_rss_mb": largest["baseline_rss_mb"],
        "seconds": args.seconds,
        "resolution": resolution,
        "segment_seconds": SEGMENT_SECONDS,
        "rounds": args.rounds,
        "quick": args.quick,
        "by_streams": results,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
