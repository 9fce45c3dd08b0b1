"""Hot config reload: the watcher alone, then the whole agent against the real RTSP camera and
ffmpeg (no mocks).

Central is not running in these tests: ``central`` points at unused ports on 127.0.0.1, so the
relay just retries in the background while the recorders fill the outbox.

How a camera's ffmpeg is found (``ffmpeg_pids``): the agent runs inside this test process, so
its ffmpegs are our children. We scan /proc for live processes whose parent is us, whose
argv[0] is ``ffmpeg`` and whose arguments hold a path under this agent's data_dir with the
camera key as a path component (the recorder writes to data_dir/segments/<key>/<run>/). Both
cameras record the same RTSP URL (the test camera serves one path, shared by all clients), so
the URL cannot tell them apart: the key in the output path does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import main as agent_cli
from agent.config import AgentConfig, load_config
from agent.reload import ConfigReloader
from agent.service import Agent, read_status
from devstack.procs import free_port

AMQP_PASSWORD = "amqp-s3cret-pw"
TOKEN = "tok-s3cret-token"
CAMERA_PASSWORD = "cam-s3cret-pw"


# -- helpers ---------------------------------------------------------------------------------


def camera_entry(url: str, name: str = "test", segment_seconds: int = 2) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "name": name,
        "url": url,
        "record": {"segment_seconds": segment_seconds},
    }


def config_data(data_dir: Path, cameras: dict[str, Any]) -> dict[str, Any]:
    return {
        "agent_id": str(uuid.uuid4()),
        "city_id": str(uuid.uuid4()),
        "data_dir": str(data_dir),
        "central": {
            "api_url": f"http://127.0.0.1:{free_port()}/",
            "amqp_url": f"amqp://agent:{AMQP_PASSWORD}@127.0.0.1:{free_port()}/",
            "token": TOKEN,
        },
        "cameras": cameras,
    }


def save(path: Path, data: dict[str, Any] | str, *, atomic: bool = True) -> None:
    """Write the config as an editor would: a temp file renamed over it, or in place."""
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    if atomic:
        tmp = path.with_name(f".{path.name}.swp")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)


def ffmpeg_pids(data_dir: Path, key: str) -> set[int]:
    """Live ffmpeg children of this process recording camera ``key`` of the agent in data_dir."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = [
                a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")
            ]
        except OSError:
            continue  # exited while we looked
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) != me or state == "Z" or Path(argv[0]).name != "ffmpeg":
            continue
        for arg in argv:
            path = Path(arg)
            if path.is_relative_to(data_dir) and key in path.relative_to(data_dir).parts:
                found.add(int(entry.name))
    return found


def ffmpeg_argv(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]


async def wait_until(
    what: str, check: Callable[[], Any], timeout_s: float, agent_task: asyncio.Task[None] | None
) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        if agent_task is not None and agent_task.done():
            agent_task.result()  # surface the agent's crash
            raise AssertionError(f"the agent stopped while waiting for {what}")
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.2)


@dataclass
class RunningAgent:
    agent: Agent
    path: Path
    data: dict[str, Any]
    task: asyncio.Task[None]

    @property
    def data_dir(self) -> Path:
        return Path(self.data["data_dir"])

    def pids(self, key: str) -> set[int]:
        return ffmpeg_pids(self.data_dir, key)

    def save(self, **kwargs: Any) -> None:
        save(self.path, self.data, **kwargs)

    def status_file(self) -> dict[str, Any]:
        status = read_status(self.data_dir)
        assert status is not None, "no status.json"
        return status

    async def until(self, what: str, check: Callable[[], Any], timeout_s: float = 30) -> Any:
        return await wait_until(what, check, timeout_s, self.task)

    async def recording(self, key: str, timeout_s: float = 40) -> int:
        """Wait until camera ``key`` registered a segment and has one ffmpeg; its PID."""

        def one_pid_and_a_segment() -> int | None:
            recorder = self.agent.recorders.get(key)
            pids = self.pids(key)
            if recorder is None or recorder.segments_registered < 1 or len(pids) != 1:
                return None
            return next(iter(pids))

        pid: int = await self.until(f"{key} recording", one_pid_and_a_segment, timeout_s)
        return pid

    async def reloaded(self, n: int) -> None:
        reloader = self.agent.reloader
        assert reloader is not None
        await self.until(f"reload #{n}", lambda: reloader.reloads >= n)


@contextlib.asynccontextmanager
async def running_agent(tmp_path: Path, cameras: dict[str, Any]) -> AsyncIterator[RunningAgent]:
    """The agent on a watched config file with ``cameras``; stopped (and checked) at the end."""
    data = config_data(tmp_path / "agent", cameras)
    path = tmp_path / "agent.yaml"
    save(path, data)
    agent = Agent(load_config(path), path)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    running = RunningAgent(agent, path, data, task)
    try:
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        # A clean stop: every ffmpeg of this agent has exited, and the status file says so.
        for key in cameras:
            assert not running.pids(key), f"{key}'s ffmpeg outlived the agent"
        assert running.status_file()["state"] == "stopped"


# -- the watcher alone -----------------------------------------------------------------------


class Applied:
    """An ``apply`` that records the configs it is given."""

    def __init__(self) -> None:
        self.configs: list[AgentConfig] = []

    async def __call__(self, config: AgentConfig) -> None:
        self.configs.append(config)


@contextlib.asynccontextmanager
async def watching(
    tmp_path: Path, data: dict[str, Any]
) -> AsyncIterator[tuple[ConfigReloader, Applied, Path]]:
    path = tmp_path / "agent.yaml"
    save(path, data)
    applied = Applied()
    reloader = ConfigReloader(path, applied, load_config(path))
    stop = asyncio.Event()
    task = asyncio.create_task(reloader.watch(stop))
    try:
        await asyncio.sleep(0.5)  # the initial check (no change: nothing applied)
        yield reloader, applied, path
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def camera_with_password(url: str = "rtsp://127.0.0.1/x") -> dict[str, Any]:
    return {**camera_entry(url), "username": "op", "password": CAMERA_PASSWORD}


@pytest.mark.timeout(30)
async def test_rejected_yaml_is_logged_without_quoting_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    data = config_data(tmp_path / "agent", {"cam1": camera_with_password()})
    async with watching(tmp_path, data) as (reloader, applied, path):
        assert applied.configs == [] and reloader.last_reload is None
        # A YAML error on the password's line: PyYAML would quote that line.
        text = yaml.safe_dump(data, sort_keys=False).replace(
            f"password: {CAMERA_PASSWORD}", f"password: {CAMERA_PASSWORD}: x"
        )
        save(path, text)
        error = await wait_until("a rejection", lambda: reloader.last_reload_error, 10, None)
        assert "not valid YAML" in error.message and "line " in error.message
        assert "config reload rejected: " in caplog.text
        for secret in (CAMERA_PASSWORD, AMQP_PASSWORD, TOKEN):
            assert secret not in caplog.text and secret not in error.message
        assert applied.configs == []

        # The file repaired (same content as before the bad edit): accepted, error cleared.
        save(path, data)
        await wait_until("the repair", lambda: reloader.last_reload_error is None, 10, None)
        assert reloader.last_reload is not None and reloader.last_reload.ok


@pytest.mark.timeout(30)
async def test_slow_in_place_write_is_read_once_finished(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = config_data(tmp_path / "agent", {"cam1": camera_entry("rtsp://127.0.0.1/x")})
    async with watching(tmp_path, data) as (reloader, applied, path):
        data["cameras"]["cam2"] = camera_entry("rtsp://127.0.0.1/y")
        text = yaml.safe_dump(data, sort_keys=False)
        # A writer that truncates the file and writes it in pieces, pausing in between.
        with path.open("w") as fh:
            for i in range(0, len(text), 40):
                fh.write(text[i : i + 40])
                fh.flush()
                await asyncio.sleep(0.05)
        await wait_until("the reload", lambda: applied.configs, 10, None)
        await asyncio.sleep(1.5)  # nothing else follows
        assert [set(c.cameras) for c in applied.configs] == [{"cam1", "cam2"}]
        assert reloader.last_reload is not None and reloader.last_reload.ok
        assert "rejected" not in caplog.text


@pytest.mark.timeout(30)
async def test_deleted_file_is_rejected_and_touch_is_ignored(tmp_path: Path) -> None:
    data = config_data(tmp_path / "agent", {"cam1": camera_entry("rtsp://127.0.0.1/x")})
    async with watching(tmp_path, data) as (reloader, applied, path):
        os.utime(path)  # touched, content unchanged: nothing to apply
        await asyncio.sleep(1.5)
        assert applied.configs == [] and reloader.last_reload is None

        path.unlink()
        error = await wait_until("a rejection", lambda: reloader.last_reload_error, 10, None)
        assert "cannot read" in error.message

        data["cameras"]["cam1"]["name"] = "renamed"
        save(path, data)
        await wait_until("the reload", lambda: applied.configs, 10, None)
        assert applied.configs[-1].cameras["cam1"].name == "renamed"
        assert reloader.last_reload_error is None


@pytest.mark.timeout(30)
async def test_falls_back_to_polling_when_the_os_refuses_a_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The one stand-in in this file: exhausting the host's inotify watches for real would
    # break other programs. watchfiles raises OSError("OS file watch limit reached") then.
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("OS file watch limit reached")

    monkeypatch.setattr("agent.reload.awatch", refuse)
    data = config_data(tmp_path / "agent", {"cam1": camera_entry("rtsp://127.0.0.1/x")})
    async with watching(tmp_path, data) as (_, applied, path):
        assert "checking the config every 1 s instead" in caplog.text
        data["cameras"]["cam1"]["name"] = "renamed"
        save(path, data)
        await wait_until("the reload", lambda: applied.configs, 10, None)
        assert applied.configs[-1].cameras["cam1"].name == "renamed"


# -- the agent, recording the real camera ----------------------------------------------------


@pytest.mark.timeout(120)
async def test_added_camera_starts_and_the_others_keep_their_ffmpeg(
    camera: Any, tmp_path: Path
) -> None:
    async with running_agent(tmp_path, {"cam1": camera_entry(camera.url)}) as run:
        pid1 = await run.recording("cam1")
        task1 = run.agent.recorder_tasks()["cam1"]

        run.data["cameras"]["cam2"] = camera_entry(camera.url, name="second")
        run.save()
        await run.reloaded(1)
        pid2 = await run.recording("cam2")

        assert pid2 != pid1
        assert run.pids("cam1") == {pid1}, "cam1's ffmpeg was restarted"
        assert run.agent.recorder_tasks()["cam1"] is task1
        status = await run.until(
            "cam2 in status.json",
            lambda: {c["key"]: c for c in run.status_file()["cameras"]}.get("cam2", {}).get(
                "segments_registered"
            ),
        )
        assert status >= 1


@pytest.mark.timeout(120)
async def test_removed_or_disabled_camera_stops_and_the_other_keeps_its_ffmpeg(
    camera: Any, tmp_path: Path
) -> None:
    cameras = {key: camera_entry(camera.url, name=key) for key in ("cam1", "cam2", "cam3")}
    async with running_agent(tmp_path, cameras) as run:
        pids = {key: await run.recording(key) for key in cameras}
        task1 = run.agent.recorder_tasks()["cam1"]

        del run.data["cameras"]["cam2"]
        run.data["cameras"]["cam3"]["enabled"] = False
        run.save(atomic=False)
        await run.reloaded(1)

        # apply() waits for the stopped recorders: their ffmpegs are gone by now.
        assert run.pids("cam2") == set() and run.pids("cam3") == set()
        assert run.pids("cam1") == {pids["cam1"]}
        assert run.agent.recorder_tasks().keys() == {"cam1"}
        assert run.agent.recorder_tasks()["cam1"] is task1

        before = run.agent.recorders["cam1"].segments_registered
        await run.until(
            "cam1 still recording",
            lambda: run.agent.recorders["cam1"].segments_registered > before,
        )
        status = await run.until(
            "status.json without cam2",
            lambda: (
                (s := {c["key"]: c for c in run.status_file()["cameras"]}).keys()
                == {"cam1", "cam3"}
                and s
            ),
        )
        assert status["cam3"]["status"] == "disabled"
        assert status["cam1"]["status"] == "online"


@pytest.mark.timeout(120)
async def test_changed_camera_restarts_alone_and_top_level_changes_wait_for_restart(
    camera: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cameras = {"cam1": camera_entry(camera.url), "cam2": camera_entry(camera.url)}
    async with running_agent(tmp_path, cameras) as run:
        pid1, pid2 = await run.recording("cam1"), await run.recording("cam2")
        task2 = run.agent.recorder_tasks()["cam2"]
        assert ffmpeg_argv(pid1)[ffmpeg_argv(pid1).index("-segment_time") + 1] == "2"
        api_url = run.agent.config.central.api_url

        run.data["cameras"]["cam1"]["record"]["segment_seconds"] = 3
        run.data["central"]["api_url"] = f"http://127.0.0.1:{free_port()}/"
        run.save()
        await run.reloaded(1)

        new_pid1 = await run.recording("cam1")
        assert new_pid1 != pid1
        argv = ffmpeg_argv(new_pid1)
        assert argv[argv.index("-segment_time") + 1] == "3"
        assert run.pids("cam2") == {pid2}, "cam2 was restarted though it did not change"
        assert run.agent.recorder_tasks()["cam2"] is task2

        # central.* is not applied live: the old value stays, and the agent says so.
        assert run.agent.config.central.api_url == api_url
        assert run.agent.restart_required == ("central.api_url",)
        assert "need an agent restart to take effect: central.api_url" in caplog.text
        assert "camera=cam1 changed (record.segment_seconds)" in caplog.text
        await run.until(
            "restart_required in status.json",
            lambda: run.status_file()["reload"]["restart_required"] == ["central.api_url"],
        )


@pytest.mark.timeout(150)
async def test_invalid_edits_keep_the_running_config(
    camera: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_agent(tmp_path, {"cam1": camera_entry(camera.url)}) as run:
        reloader = run.agent.reloader
        assert reloader is not None
        pid = await run.recording("cam1")
        recorder = run.agent.recorders["cam1"]

        # 1. Not YAML any more (an unclosed flow sequence appended), saved in place.
        broken = yaml.safe_dump(run.data, sort_keys=False) + "extra: [not closed\n"
        save(run.path, broken, atomic=False)
        error = await run.until("the YAML rejection", lambda: run.agent.last_reload_error)
        assert "not valid YAML" in error.message
        await run.until("the YAML rejection in status.json", lambda: _file_error(run))
        # `gtvision-agent status` finds data_dir all the same, shows the rejection, exits 2.
        rc, out = await asyncio.to_thread(_cli_status, run.path)
        assert rc == 2 and "REJECTED" in out and "not valid YAML" in out

        # 2. YAML, but a value out of range.
        run.data["cameras"]["cam1"]["record"]["segment_seconds"] = 90
        run.save()
        error = await run.until(
            "the schema rejection",
            lambda: (e := run.agent.last_reload_error) and "segment_seconds" in e.message and e,
        )
        assert "cameras -> cam1 -> record -> segment_seconds" in error.message
        assert "config reload rejected: " in caplog.text
        status = await run.until(
            "the rejection in status.json",
            lambda: (
                (s := run.status_file()["reload"])["error"]
                and "segment_seconds" in s["error"]["message"]
                and s
            ),
        )
        assert status["last"]["ok"] is False

        # Still recording with the old config: same recorder, same ffmpeg, more segments.
        before = recorder.segments_registered
        await run.until("more segments", lambda: recorder.segments_registered > before)
        assert run.agent.recorders["cam1"] is recorder
        assert run.pids("cam1") == {pid}
        assert run.agent.config.cameras["cam1"].record.segment_seconds == 2
        assert reloader.reloads == 0

        # `gtvision-agent status` shows the rejection (and exits 2: the file is invalid).
        out = await asyncio.to_thread(_cli_status, run.path)
        assert out[0] == 2
        assert "REJECTED" in out[1] and "segment_seconds" in out[1]
        assert "cam1" in out[1] and "outbox backlog:" in out[1]

        # 3. A valid edit is applied again.
        run.data["cameras"]["cam1"]["record"]["segment_seconds"] = 3
        run.save()
        await run.reloaded(1)
        assert run.agent.last_reload_error is None
        new_pid = await run.recording("cam1")
        assert new_pid != pid
        await run.until("the error cleared in status.json", lambda: not _file_error(run))
        out = await asyncio.to_thread(_cli_status, run.path)
        assert out[0] == 0 and "last reload: applied" in out[1]

        status_text = (run.data_dir / "status.json").read_text()
        for secret in (AMQP_PASSWORD, TOKEN):
            assert secret not in caplog.text and secret not in status_text


def _file_error(run: RunningAgent) -> Any:
    return run.status_file()["reload"]["error"]


def _cli_status(path: Path) -> tuple[int, str]:
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        rc = agent_cli(["status", "--config", str(path)])
    return rc, out.getvalue()


def test_status_file_is_plain_json(tmp_path: Path) -> None:
    assert read_status(tmp_path) is None
    (tmp_path / "status.json").write_text("{half")
    assert read_status(tmp_path) is None
    (tmp_path / "status.json").write_text(json.dumps({"state": "stopped"}))
    assert read_status(tmp_path) == {"state": "stopped"}
