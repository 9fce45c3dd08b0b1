"""The running agent: a small supervisor of one recorder per enabled camera and the relay.

Every task runs in one TaskGroup, so an unexpected error in any of them stops the agent (and
systemd restarts it). ``Agent.apply`` takes a new config while running: it starts added
cameras, stops removed or disabled ones, restarts only the cameras whose settings changed and
leaves the others alone (same task, same ffmpeg). The disk budget (``storage``) applies at the
evictor's next check, the upload cap (``sync``) at the relay's next chunk. Other top-level
keys (agent id, city, data directory, how to reach central) are not applied live: the agent
keeps the values it started with and says which keys wait for a restart.

Central's config hint (``ConfigHint``, held in the store) is laid over the YAML: the cameras
that run are those the YAML enables minus those central disabled, and the upload cap is the
smaller of the YAML's and central's. A new hint goes through the same path as a reload; the
held one is applied at start-up before any camera starts.

The agent writes its state (cameras, last config reload, disk budget and usage) to
``data_dir/status.json`` every few seconds, so ``gtvision-agent status`` can show it without
talking to the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.commands import CommandConsumer, held_config_hint
from agent.config import AgentConfig, CameraConfig, SyncConfig, redact_url
from agent.eviction import Budget, Evictor
from agent.lpr.service import LprService
from agent.relay import Relay
from agent.reload import ConfigReloader, ReloadResult
from agent.segmenter import CameraRecorder
from agent.spool import reconcile
from agent.store import Store
from agent.thumbnails import Thumbnailer
from shared.messages import ConfigHint

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
STATUS_INTERVAL_S = 2.0


def store_path(config: AgentConfig) -> str:
    return str(config.data_dir / "agent.sqlite3")


def status_path(data_dir: Path) -> Path:
    return data_dir / STATUS_FILE


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def changed_fields(old: BaseModel, new: BaseModel, prefix: str = "") -> list[str]:
    """Dotted paths of the fields that differ between two models of the same type."""
    keys: list[str] = []
    for name in type(old).model_fields:
        a, b = getattr(old, name), getattr(new, name)
        if isinstance(a, BaseModel) and type(a) is type(b):
            keys += changed_fields(a, b, f"{prefix}{name}.")
        elif a != b:
            keys.append(prefix + name)
    return keys


LIVE_KEYS = ("cameras", "storage", "sync")  # applied while running; the rest wait for a restart


def restart_required_keys(running: AgentConfig, new: AgentConfig) -> list[str]:
    """Top-level settings that differ and can only take effect when the agent restarts."""
    return [
        k
        for k in changed_fields(running, new)
        if not any(k == live or k.startswith(f"{live}.") for live in LIVE_KEYS)
    ]


def effective_config(config: AgentConfig, hint: ConfigHint | None) -> AgentConfig:
    """The YAML config with central's hint laid over it: cameras central disabled (matched by
    id) do not run, and the upload cap is the smaller of the YAML's and central's (either one
    when only one is set). A hint never enables a camera or lifts a cap the YAML sets: the
    installer's file stays authoritative, central may only hold back."""
    if hint is None:
        return config
    disabled = hint.disabled_cameras()
    cameras = {
        key: cam.model_copy(update={"enabled": False}) if cam.enabled and cam.id in disabled
        else cam
        for key, cam in config.cameras.items()
    }  # fmt: skip
    caps = [c for c in (config.sync.max_upload_mbps, hint.max_upload_mbps) if c]
    sync = SyncConfig(max_upload_mbps=min(caps)) if caps else config.sync
    return config.model_copy(update={"cameras": cameras, "sync": sync})


@dataclass(frozen=True)
class ApplyResult:
    """What ``Agent.apply`` did, by camera key."""

    started: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()  # top-level keys still running with old values


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON: readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class Agent:
    """Supervises the store, the relay, one recorder per enabled camera and the config watch.

    Public API: ``run(stop)``, ``apply(config)``, ``status()``, ``write_status()``,
    ``recorders`` (key -> CameraRecorder), ``recorder_tasks()``, ``restart_required``,
    ``last_reload`` and ``last_reload_error``.
    """

    def __init__(self, config: AgentConfig, config_path: Path | None = None) -> None:
        # As running: live keys (central's hint laid over the YAML), other keys as started.
        self.config = config
        self.file_config = config  # the YAML as last loaded
        self.hint: ConfigHint | None = None  # central's config hint, as held in the store
        self.config_path = config_path
        self.store = Store(config.data_dir / "agent.sqlite3", config.agent_id)
        self.spool = config.data_dir / "segments"
        self.relay = Relay(config, self.store, health=self.heartbeat_health)
        self.commands = CommandConsumer(config, self.store, on_config_hint=self.apply_hint)
        self.evictor = Evictor(
            self.store, self.spool, self._budget, reserve=config.data_dir / "disk-reserve"
        )
        self.lpr = LprService(config, self.store)
        self.recorders: dict[str, CameraRecorder] = {}
        self.restart_required: tuple[str, ...] = ()
        self.reloader = (
            ConfigReloader(config_path, self.apply, config, on_result=self._reloaded)
            if config_path is not None
            else None
        )
        self.state = "starting"  # starting, running, stopping, stopped
        self.started_at: float | None = None
        self._recorder_tasks: dict[str, asyncio.Task[None]] = {}
        self._recorder_since: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # everything spawned, until it ends
        self._tg: asyncio.TaskGroup | None = None
        self._apply_lock = asyncio.Lock()
        self._status_error: str | None = None

    # -- running ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Record and relay until ``stop`` is set (or forever). Closes the store on the way out."""
        stop = stop or asyncio.Event()
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.open()
        watch_stop = asyncio.Event()
        try:
            # docs/design/segments.md "Start-up recovery": before any recorder starts, so no
            # file is being written while the spool is reconciled.
            await reconcile(self.store, self.spool)
            # Central's held hint, before any camera starts: one it disabled stays stopped.
            self.hint = await held_config_hint(self.store)
            self.config = effective_config(self.file_config, self.hint)
            self.relay.set_upload_cap(self.config.sync.upload_bytes_per_s())
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self.started_at = time.time()
                self.state = "running"
                self._spawn(self.relay.run(), "relay")
                self._spawn(self.commands.run(), "commands")
                self._spawn(self.evictor.run(), "evictor")
                self._spawn(self.lpr.run(), "lpr")
                for key, camera in self.config.cameras.items():
                    if camera.enabled:
                        self._start_recorder(key, camera)
                log.info(
                    "agent %s running %d camera(s)%s",
                    self.config.agent_id,
                    len(self._recorder_tasks),
                    f", watching {self.config_path}" if self.reloader else "",
                )
                self._spawn(self._publish_status(), "status")
                if self.reloader is not None:
                    self._spawn(self.reloader.watch(watch_stop), "config-watch")
                await stop.wait()
                self.state = "stopping"
                watch_stop.set()
                # Cancelling a recorder terminates its ffmpeg; the TaskGroup waits for all.
                for task in list(self._tasks):
                    task.cancel()
        finally:
            self._tg = None
            self.state = "stopped"
            self.recorders.clear()
            self._recorder_tasks.clear()
            self._recorder_since.clear()
            self.write_status()
            await self.store.close()
            log.info("agent %s stopped", self.config.agent_id)

    def _budget(self) -> Budget:
        return Budget.of(self.config.storage)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        if self._tg is None or self.state != "running":
            coro.close()
            raise RuntimeError("the agent is not running")
        task = self._tg.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start_recorder(self, key: str, camera: CameraConfig) -> None:
        thumbnails = Thumbnailer(key, camera, self.store, self.config.data_dir / "thumbnails")
        recorder = CameraRecorder(
            key, camera, self.store, self.spool, on_segment=thumbnails.on_segment
        )
        self._recorder_tasks[key] = self._spawn(recorder.run(), f"camera:{key}")
        self.recorders[key] = recorder
        self._recorder_since[key] = time.time()
        self.lpr.start(key, camera, self._spawn)  # plate recognition, if lpr.enabled

    async def _stop_recorder(self, key: str) -> None:
        """Cancel one recorder and wait until its ffmpeg has exited."""
        task = self._recorder_tasks.pop(key)
        self.recorders.pop(key, None)
        self._recorder_since.pop(key, None)
        task.cancel()
        await asyncio.gather(asyncio.wait([task]), self.lpr.stop(key))

    def recorder_tasks(self) -> Mapping[str, asyncio.Task[None]]:
        """The running recorder tasks by camera key (a copy)."""
        return dict(self._recorder_tasks)

    # -- reconfiguring ---------------------------------------------------------------------

    async def apply(self, new: AgentConfig) -> ApplyResult:
        """Bring the running cameras in line with ``new`` (the YAML, with central's hint laid
        over it); disturb only those that changed."""
        self.file_config = new
        return await self._apply()

    async def apply_hint(self, hint: ConfigHint) -> ApplyResult | None:
        """Lay central's newly held hint over the YAML, the same way a reload applies; None if
        the agent is not running (it applies the held hint when it starts)."""
        self.hint = hint
        if self.state != "running":
            return None
        return await self._apply()

    async def _apply(self) -> ApplyResult:
        async with self._apply_lock:
            if self._tg is None or self.state != "running":
                raise RuntimeError("the agent is not running")
            new = effective_config(self.file_config, self.hint)
            running = self.config.cameras
            wanted = {k: c for k, c in new.cameras.items() if c.enabled}
            active = list(self._recorder_tasks)
            stopped = [k for k in active if k not in wanted]
            restarted = [k for k in active if k in wanted and wanted[k] != running[k]]
            unchanged = [k for k in active if k in wanted and k not in restarted]
            started = [k for k in wanted if k not in self._recorder_tasks]
            restart_keys = restart_required_keys(self.config, new)
            for key in restarted:
                fields = ", ".join(changed_fields(running[key], wanted[key]))
                log.info("camera=%s changed (%s): restarting its recorder", key, fields)
            if new.storage != self.config.storage:
                log.info("disk budget changed: applied at the next check")
            if new.sync != self.config.sync:
                log.info("upload cap now %s Mbps", new.sync.max_upload_mbps or "no")
                self.relay.set_upload_cap(new.sync.upload_bytes_per_s())
            self.config = self.config.model_copy(
                update={"cameras": dict(new.cameras), "storage": new.storage, "sync": new.sync}
            )
            self.restart_required = tuple(restart_keys)
            await asyncio.gather(*(self._stop_recorder(k) for k in [*stopped, *restarted]))
            for key in [*restarted, *started]:
                self._start_recorder(key, wanted[key])
            result = ApplyResult(
                tuple(started),
                tuple(stopped),
                tuple(restarted),
                tuple(unchanged),
                self.restart_required,
            )
            log.info(
                "config applied: started [%s], stopped [%s], restarted [%s], unchanged [%s]",
                *(", ".join(keys) for keys in (started, stopped, restarted, unchanged)),
            )
            if restart_keys:
                log.warning(
                    "config keys changed that need an agent restart to take effect: %s; "
                    "still running with the old values",
                    ", ".join(restart_keys),
                )
            self.write_status()
            return result

    async def _reloaded(self, result: ReloadResult) -> None:
        self.write_status()

    @property
    def last_reload(self) -> ReloadResult | None:
        return self.reloader.last_reload if self.reloader else None

    @property
    def last_reload_error(self) -> ReloadResult | None:
        """The config reload rejection in force (None once a valid file was applied)."""
        return self.reloader.last_reload_error if self.reloader else None

    # -- status ----------------------------------------------------------------------------

    def camera_status(self) -> list[dict[str, Any]]:
        """key, name, status, reason and segments_registered of every configured camera."""
        cameras = []
        version = self.hint.version if self.hint else None
        central_off = dict.fromkeys(self.disabled_by_central(), version)
        for key, camera in self.config.cameras.items():
            recorder = self.recorders.get(key)
            if recorder is not None:
                status, reason = recorder.status, recorder.reason
                registered = recorder.segments_registered
            elif key in central_off:
                status, registered = "disabled", 0
                reason = f"disabled at central (config hint version {central_off[key]})"
            elif not camera.enabled:
                status, reason, registered = "disabled", "enabled: false in the config", 0
            else:
                status, reason, registered = "offline", f"agent {self.state}", 0
            cameras.append(
                {
                    "key": key,
                    "name": camera.name,
                    "enabled": camera.enabled,
                    "disabled_by_central": key in central_off,
                    "status": status,
                    "reason": reason,
                    "segments_registered": registered,
                    "recording_since": _iso(self._recorder_since.get(key)),
                    "lpr": self.lpr.status().get(key),
                }
            )
        return cameras

    def status(self) -> dict[str, Any]:
        """Everything the status file holds (no credentials: no URLs, no secrets)."""
        error = self.last_reload_error
        cap = self.relay.upload_cap
        return {
            "agent_id": str(self.config.agent_id),
            "pid": os.getpid(),
            "state": self.state,
            "started_at": _iso(self.started_at),
            "updated_at": _iso(time.time()),
            "status_interval_s": STATUS_INTERVAL_S,
            "cameras": self.camera_status(),
            "reload": {
                "config_path": str(self.config_path) if self.config_path else None,
                "watching": self.reloader is not None,
                "last": self.last_reload.to_json() if self.last_reload else None,
                "error": error.to_json() if error else None,
                "restart_required": list(self.restart_required),
            },
            "central_hint": self.hint_status(),
            "relay": {
                "sent": self.relay.sent,
                "upload_cap_mbps": None if cap is None else cap / 125_000,
                "last_error": redact_url(self.relay.last_error) if self.relay.last_error else None,
            },
            "storage": self.storage_status(),
        }

    def disabled_by_central(self) -> list[str]:
        """Keys of the cameras the YAML enables and central's hint disabled."""
        if self.hint is None:
            return []
        off = self.hint.disabled_cameras()
        return [k for k, c in self.file_config.cameras.items() if c.enabled and c.id in off]

    def hint_status(self) -> dict[str, Any] | None:
        """Central's held config hint, for the status file (None: none received)."""
        if self.hint is None:
            return None
        return {
            "version": self.hint.version,
            "max_upload_mbps": self.hint.max_upload_mbps,
            "cameras_disabled": self.disabled_by_central(),
        }

    def heartbeat_health(self) -> dict[str, Any]:
        """Cameras and disk for the relay's heartbeats (shared/messages.py ``Heartbeat``)."""
        by_key = {c["key"]: c for c in self.camera_status()}
        cameras = [
            {
                "camera_id": camera.id,
                "status": by_key[key]["status"],
                "reason": str(by_key[key]["reason"] or "")[:200],
            }
            for key, camera in self.config.cameras.items()
        ]
        check = self.evictor.last_check
        disk = None
        if check is not None:
            keys = ("used_bytes", "free_bytes", "capacity_bytes", "retention_days")
            disk = {k: check[k] for k in keys}
        return {"cameras": cameras, "disk": disk}

    def storage_status(self) -> dict[str, Any]:
        """The disk budget as configured and the evictor's last measurement of it."""
        cfg = self.config.storage
        return {
            "max_bytes": cfg.max_bytes,
            "min_free_bytes": cfg.min_free_bytes,
            "check_seconds": cfg.check_seconds,
            "last_check": self.evictor.last_check,
            "last_error": self.evictor.last_error,
        }

    def write_status(self) -> None:
        """Write ``data_dir/status.json`` now (small: written inline, in order)."""
        try:
            write_json_atomic(status_path(self.config.data_dir), self.status())
        except OSError as exc:
            if str(exc) != self._status_error:  # say it once, not every few seconds
                log.warning("cannot write %s: %s", status_path(self.config.data_dir), exc)
            self._status_error = str(exc)
        else:
            self._status_error = None

    async def _publish_status(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(STATUS_INTERVAL_S)


async def run_agent(
    config: AgentConfig, stop: asyncio.Event | None = None, config_path: Path | None = None
) -> None:
    """Run the agent until ``stop`` is set; with ``config_path``, reload that file on change."""
    await Agent(config, config_path).run(stop)


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The status file an agent wrote in ``data_dir``, or None if there is none (yet)."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(status_path(data_dir).read_text())
        if isinstance(data, dict):
            return data
    return None
