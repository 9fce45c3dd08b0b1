"""The dev stack over a state directory: idempotent up, down by recorded PID, status and env."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack import postgres, rabbitmq, redis, s3
from devstack.procs import (
    ProcRef,
    RunningService,
    ServiceError,
    free_port,
    log_hint,
    port_open,
    stop_procs,
    track,
)

log = logging.getLogger(__name__)

SERVICES: tuple[str, ...] = ("postgres", "rabbitmq", "s3", "redis", "camera")
ALL = SERVICES
STATE_FILE = "stack.json"
STATE_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_state_dir() -> Path:
    env = os.environ.get("GTVISION_STATE_DIR")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / ".state"


@dataclass(frozen=True)
class Ports:
    """Every TCP port the stack binds on 127.0.0.1.

    Defaults sit below Linux's ephemeral range (32768-60999): a client retrying a stopped
    server there can connect to itself and then hold the port the server needs.
    """

    postgres: int = 25432
    amqp: int = 25672
    rabbitmq_management: int = 25673
    rabbitmq_dist: int = 25674
    epmd: int = 25675
    s3: int = 29000
    s3_metrics: int = 29001
    redis: int = 26379
    rtsp: int = 28554

    @classmethod
    def free(cls) -> Ports:
        """Free ports below the ephemeral range, e.g. for tests beside a running stack."""
        chosen: list[int] = []
        for _ in dataclasses.fields(cls):
            chosen.append(free_port(exclude=chosen))
        return cls(*chosen)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def for_service(self, name: str) -> dict[str, int]:
        keys = {
            "postgres": ("postgres",),
            "rabbitmq": ("amqp", "rabbitmq_management", "rabbitmq_dist", "epmd"),
            "s3": ("s3", "s3_metrics"),
            "redis": ("redis",),
            "camera": ("rtsp",),
        }[name]
        values = self.as_dict()
        return {k: values[k] for k in keys}


DEFAULT_PORTS = Ports()

# The port whose answering means "this service is up" for status/idempotence checks.
_MAIN_PORT = {
    "postgres": "postgres",
    "rabbitmq": "amqp",
    "s3": "s3",
    "redis": "redis",
    "camera": "rtsp",
}


@dataclass(frozen=True)
class StackOptions:
    """How services are run: `up` keeps data safe, the test fixtures trade safety for speed."""

    pg_fsync: bool = True
    redis_persist: bool = True
    camera_seconds: float = 30.0
    camera_width: int = 1280
    camera_height: int = 720
    # Where scene videos are rendered/cached; None = STATE/camera.
    camera_scene_dir: Path | None = None


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pids: list[int]
    alive: bool
    url: str
    log: str
    info: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Stack:
    """The services of one state directory; every method is safe to call repeatedly."""

    def __init__(self, state_dir: Path | None = None, options: StackOptions | None = None) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.options = options or StackOptions()

    # ---- state file -------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def _load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            data = {}
        except json.JSONDecodeError:
            log.warning("ignoring unreadable %s", self.state_path)
            data = {}
        data.setdefault("version", STATE_VERSION)
        data.setdefault("services", {})
        data.setdefault("dirs", {})
        return data

    def _save(self, data: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.state_path)  # atomic: a crash never leaves half a state file

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two `up`s racing would start a service twice on the same data dir.
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def services(self) -> dict[str, RunningService]:
        """What the state file records (running or not)."""
        return {
            name: RunningService.from_json(rec) for name, rec in self._load()["services"].items()
        }

    def service(self, name: str) -> RunningService | None:
        return self.services().get(name)

    def recorded_ports(self) -> Ports:
        """The ports of the last `up` (defaults where nothing is recorded)."""
        known = {f.name for f in dataclasses.fields(Ports)}
        saved = self._load().get("ports", {})
        return Ports(**{k: int(v) for k, v in saved.items() if k in known})

    # ---- lifecycle --------------------------------------------------------------------------

    @staticmethod
    def is_running(svc: RunningService) -> bool:
        main = svc.ports.get(_MAIN_PORT.get(svc.name, ""), 0)
        return svc.alive() and (main == 0 or port_open(main))

    def up(
        self,
        services: Iterable[str] = ALL,
        ports: Ports = DEFAULT_PORTS,
        *,
        on_event: Callable[[str, str, float], None] | None = None,
    ) -> dict[str, RunningService]:
        """Start what is not running; leave running services alone; return all requested.

        `on_event(name, "running"|"started", seconds)` reports progress (used by the CLI).
        Raises ServiceError (with the log tail) if a service fails; those started before stay up.
        """
        wanted = _validate(services)
        result: dict[str, RunningService] = {}
        with self._locked():
            for name in SERVICES:
                if name not in wanted:
                    continue
                data = self._load()
                rec = data["services"].get(name)
                current = RunningService.from_json(rec) if rec else None
                want_ports = ports.for_service(name)
                if current and current.ports == want_ports and self.is_running(current):
                    result[name] = current
                    if on_event:
                        on_event(name, "running", 0.0)
                    continue
                if current:
                    # Dead, half-dead or moved to other ports: clear leftovers before restarting.
                    self._stop_record(current)
                _check_ports_free(name, want_ports)
                t0 = time.monotonic()
                svc = self._start(name, ports, data)
                elapsed = time.monotonic() - t0
                svc.info["startup_s"] = f"{elapsed:.2f}"
                data["services"][name] = svc.to_json()
                data["ports"] = ports.as_dict()
                self._save(data)
                log.info("%s started in %.2fs", name, elapsed)
                if on_event:
                    on_event(name, "started", elapsed)
                result[name] = svc
        return result

    def down(self, services: Iterable[str] | None = None) -> list[str]:
        """Stop (by recorded PID) the given services, or all; returns the names stopped.

        Records added with `record()` (e.g. the demo's own processes) are stopped first.
        """
        stopped: list[str] = []
        with self._locked():
            data = self._load()
            recorded = list(data["services"])
            extras = sorted(n for n in recorded if n not in SERVICES)
            order = extras + [n for n in reversed(SERVICES) if n in recorded]
            if services is not None:
                names = set(services)
                unknown = names - set(SERVICES) - set(recorded)
                if unknown:
                    raise ValueError(f"unknown service(s) {sorted(unknown)}")
                order = [n for n in order if n in names]
            # Reverse start order: clients and the camera first, the database last.
            for name in order:
                rec = data["services"][name]
                svc = RunningService.from_json(rec)
                if any(p.alive() for p in svc.procs):
                    stopped.append(name)
                self._stop_record(svc)
                # Keep the record (dirs, ports, urls) for `status`, but with nothing to stop.
                rec["procs"] = []
                self._save(data)
        return stopped

    def record(self, svc: RunningService) -> None:
        """Add (or replace) a service started outside `up`, so `status`/`down` cover it too."""
        with self._locked():
            data = self._load()
            data["services"][svc.name] = svc.to_json()
            self._save(data)

    def stop_service(self, name: str) -> None:
        self.down([name])

    def status(self) -> list[ServiceStatus]:
        out = []

        def order(name: str) -> tuple[int, str]:
            return (SERVICES.index(name) if name in SERVICES else len(SERVICES), name)

        for name, svc in sorted(self.services().items(), key=lambda kv: order(kv[0])):
            out.append(
                ServiceStatus(
                    name=name,
                    pids=svc.pids,
                    alive=bool(svc.procs) and self.is_running(svc),
                    url=svc.url,
                    log=str(svc.log),
                    info=dict(svc.info),
                )
            )
        return out

    def env(self) -> dict[str, str]:
        """Connection settings for the rest of the system, from what `up` recorded."""
        svcs = self.services()
        env: dict[str, str] = {}
        if pg := svcs.get("postgres"):
            env["DATABASE_URL"] = pg.url
        if mq := svcs.get("rabbitmq"):
            env["AMQP_URL"] = mq.url
            env["AMQP_MANAGEMENT_URL"] = mq.info["management_url"]
        if store := svcs.get("s3"):
            env["S3_ENDPOINT"] = store.info["endpoint"]
            env["S3_ACCESS_KEY"] = store.info["access_key"]
            env["S3_SECRET_KEY"] = store.info["secret_key"]
            env["S3_SECURE"] = "false"
        if rd := svcs.get("redis"):
            env["REDIS_URL"] = rd.url
        if cam := svcs.get("camera"):
            env["CAMERA_RTSP_URL"] = cam.url
            env["CAMERA_TRUTH"] = cam.info["truth"]
        return env

    # ---- per service ------------------------------------------------------------------------

    def _log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def _start(self, name: str, ports: Ports, data: dict[str, Any]) -> RunningService:
        logp = self._log_path(name)
        if name == "postgres":
            base = data["dirs"].get("postgres")
            if base is None or not Path(base).exists():
                base = str(postgres.choose_base_dir(self.state_dir / "postgres"))
                data["dirs"]["postgres"] = base
                self._save(data)
            return postgres.start_postgres(
                Path(base), ports.postgres, logp, fsync=self.options.pg_fsync
            )
        if name == "rabbitmq":
            rp = rabbitmq.RabbitPorts(
                amqp=ports.amqp,
                management=ports.rabbitmq_management,
                dist=ports.rabbitmq_dist,
                epmd=ports.epmd,
            )
            return rabbitmq.start_rabbitmq(self.state_dir / "rabbitmq", rp, logp)
        if name == "s3":
            return s3.start_s3(self.state_dir / "s3", ports.s3, ports.s3_metrics, logp)
        if name == "redis":
            return redis.start_redis(
                self.state_dir / "redis", ports.redis, logp, persist=self.options.redis_persist
            )
        if name == "camera":
            return self._start_camera(ports.rtsp, logp)
        raise ValueError(name)

    def _start_camera(self, port: int, logp: Path) -> RunningService:
        try:
            return self._start_camera_unchecked(port, logp)
        except ServiceError:
            raise
        except (RuntimeError, OSError, ValueError) as exc:
            # camera/scene report problems with their own exception types; unify for callers.
            raise ServiceError(f"camera failed: {exc}" + log_hint(logp)) from exc

    def _start_camera_unchecked(self, port: int, logp: Path) -> RunningService:
        # Imported here: the scene renderer pulls in numpy/cv2/av, which the other services
        # (and `status`/`down`) do not need.
        from devstack import camera, scene

        opts = self.options
        scene_dir = opts.camera_scene_dir or (self.state_dir / "camera")
        t0 = time.monotonic()
        # Cached by its parameters inside scene_dir: rendered once, then reused.
        video = scene.make_scene_video(
            scene_dir,
            seconds=opts.camera_seconds,
            width=opts.camera_width,
            height=opts.camera_height,
        )
        scene_s = time.monotonic() - t0
        proc = camera.start_camera(video.video, port, logp)
        track(proc)
        url = camera.rtsp_url(port)
        svc = RunningService(
            name="camera",
            procs=[ProcRef.of(proc.pid)],
            url=url,
            log=logp,
            ports={"rtsp": port},
            info={
                "truth": str(video.truth),
                "video": str(video.video),
                "scene_s": f"{scene_s:.2f}",
            },
        )
        try:
            camera.wait_camera_ready(url, 30.0, log=logp, process=proc)
        except BaseException:
            stop_procs(svc.procs, name="camera")
            raise
        return svc

    @staticmethod
    def _stop_record(svc: RunningService) -> None:
        if svc.name == "postgres":
            postgres.stop_postgres(svc)
        elif svc.name == "rabbitmq":
            rabbitmq.stop_rabbitmq(svc)
        elif svc.name == "s3":
            s3.stop_s3(svc)
        elif svc.name == "redis":
            redis.stop_redis(svc)
        else:
            stop_procs(svc.procs, name=svc.name)


def _validate(services: Iterable[str]) -> set[str]:
    names = set(services)
    unknown = names - set(SERVICES)
    if unknown:
        raise ValueError(f"unknown service(s) {sorted(unknown)}; known: {', '.join(SERVICES)}")
    return names


def _check_ports_free(name: str, ports: dict[str, int]) -> None:
    busy = {k: p for k, p in ports.items() if port_open(p)}
    if busy:
        raise ServiceError(
            f"cannot start {name}: port(s) already in use by another process: "
            + ", ".join(f"{k}={p}" for k, p in busy.items())
        )
