"""Runs GT-Vision itself on top of the dev stack: central (API + ingest) and an agent recording
the simulated camera. Used by ``gtvision-dev up``; every process is recorded by PID."""

from __future__ import annotations

import json
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from devstack.procs import HOST, ProcRef, RunningService, run_checked, start_process, wait_until
from devstack.stack import Stack

API_PORT = 8080
ADMIN_EMAIL = "admin@gtvision.local"


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _secrets(state_dir: Path) -> dict[str, str]:
    """The demo's session key and admin password, made once and kept in the state dir."""
    path = state_dir / "system" / "secrets.json"
    if path.exists():
        data: dict[str, str] = json.loads(path.read_text())
        return data
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "secret_key": secrets.token_urlsafe(48),
        "admin_password": secrets.token_urlsafe(12),
        "agent_token": secrets.token_urlsafe(32),
    }
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return data


def central_env(stack_env: Mapping[str, str], state_dir: Path) -> dict[str, str]:
    s = _secrets(state_dir)
    return dict(
        stack_env,
        GTVISION_SECRET_KEY=s["secret_key"],
        GTVISION_ADMIN_EMAIL=ADMIN_EMAIL,
        GTVISION_ADMIN_PASSWORD=s["admin_password"],
    )


def admin_login(state_dir: Path) -> tuple[str, str]:
    return ADMIN_EMAIL, _secrets(state_dir)["admin_password"]


def _api_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/api/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def prepare(stack_env: Mapping[str, str], state_dir: Path) -> dict[str, str]:
    """Migrate the database, ensure the admin and the demo city/agent/camera, write the agent's
    config. Idempotent. Returns the ids from ``gtvision-central bootstrap``."""
    env = central_env(stack_env, state_dir)
    # A stable token: re-running `up` must not lock out an agent that is already running.
    env["GTVISION_DEMO_AGENT_TOKEN"] = _secrets(state_dir)["agent_token"]
    run_checked([_bin("gtvision-central"), "migrate"], env=env, timeout_s=120, what="migrate")
    email, password = admin_login(state_dir)
    out = run_checked(
        [_bin("gtvision-central"), "bootstrap", "--admin-email", email,
         "--admin-password", password, "--camera-url", stack_env["CAMERA_RTSP_URL"]],
        env=env, timeout_s=60, what="bootstrap",
    )  # fmt: skip
    ids: dict[str, str] = json.loads(out[out.index("{") :])
    agent_dir = state_dir / "agent"
    agent_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "agent_id": ids["agent_id"],
        "city_id": ids["city_id"],
        "data_dir": str(agent_dir / "data"),
        "central": {
            "api_url": f"http://{HOST}:{API_PORT}",
            "amqp_url": stack_env["AMQP_URL"],
            "token": ids["agent_token"],
        },
        "cameras": {
            "camera_1": {
                "id": ids["camera_id"],
                "name": "Câmera de teste",
                "url": stack_env["CAMERA_RTSP_URL"],
                "record": {"segment_seconds": 4},
            }
        },
    }
    config_path = agent_dir / "agent.yaml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    config_path.chmod(0o600)
    return ids


def start_central_api(stack_env: Mapping[str, str], state_dir: Path, log: Path) -> RunningService:
    env = central_env(stack_env, state_dir)
    proc = start_process(
        [_bin("gtvision-central"), "api", "--host", HOST, "--port", str(API_PORT)], log, env=env
    )
    wait_until(lambda: _api_healthy(API_PORT), 60, what="central API health", log_path=log)
    return RunningService(
        name="central-api",
        procs=[ProcRef.of(proc.pid)],
        url=f"http://{HOST}:{API_PORT}/docs",
        log=log,
        ports={"http": API_PORT},
    )


def start_central_ingest(
    stack_env: Mapping[str, str], state_dir: Path, log: Path
) -> RunningService:
    proc = start_process(
        [_bin("gtvision-central"), "ingest"], log, env=central_env(stack_env, state_dir)
    )
    return RunningService(
        name="central-ingest", procs=[ProcRef.of(proc.pid)], url="(consumer)", log=log
    )


def start_agent(state_dir: Path, log: Path) -> RunningService:
    config = state_dir / "agent" / "agent.yaml"
    proc = start_process([_bin("gtvision-agent"), "run", "--config", str(config)], log)
    return RunningService(
        name="agent",
        procs=[ProcRef.of(proc.pid)],
        url=f"(records the camera; config {config})",
        log=log,
    )


SYSTEM_SERVICES = ("central-api", "central-ingest", "agent")


def up(stack: Stack, on_event: Callable[[str, str, float], None] | None = None) -> dict[str, str]:
    """Prepare central and start the API, the ingest consumer and the agent, each unless it
    already runs; record them in the stack so `status` and `down` cover them. Idempotent."""
    env = stack.env()
    ids = prepare(env, stack.state_dir)
    logs = stack.state_dir / "logs"
    starters: dict[str, Callable[[Path], RunningService]] = {
        "central-api": lambda log: start_central_api(env, stack.state_dir, log),
        "central-ingest": lambda log: start_central_ingest(env, stack.state_dir, log),
        "agent": lambda log: start_agent(stack.state_dir, log),
    }
    for name in SYSTEM_SERVICES:
        existing = stack.service(name)
        if existing is not None and stack.is_running(existing):
            if on_event:
                on_event(name, "running", 0.0)
            continue
        started = time.monotonic()
        svc = starters[name](logs / f"{name}.log")
        stack.record(svc)
        if on_event:
            on_event(name, "started", time.monotonic() - started)
    return ids
