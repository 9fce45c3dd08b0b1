"""Runs GT-Vision itself on top of the dev stack: central (API, ingest, worker) and an agent
recording the simulated camera. Used by ``gtvision-dev up``; every process is recorded by PID."""

from __future__ import annotations

import json
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

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
    data = {"secret_key": secrets.token_urlsafe(48), "admin_password": secrets.token_urlsafe(12)}
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return data


def central_env(stack_env: Mapping[str, str], state_dir: Path) -> dict[str, str]:
    s = _secrets(state_dir)
    amqp = urlsplit(stack_env["AMQP_URL"])
    mgmt = urlsplit(stack_env["AMQP_MANAGEMENT_URL"])
    return dict(
        stack_env,
        GTVISION_SECRET_KEY=s["secret_key"],
        GTVISION_ADMIN_EMAIL=ADMIN_EMAIL,
        GTVISION_ADMIN_PASSWORD=s["admin_password"],
        # The broker's administrator creates each enrolled agent's own user.
        RABBITMQ_MANAGEMENT_URL=f"http://{amqp.username}:{amqp.password}@{mgmt.netloc}",
    )


def admin_login(state_dir: Path) -> tuple[str, str]:
    return ADMIN_EMAIL, _secrets(state_dir)["admin_password"]


def _api_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/api/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def agent_config_path(state_dir: Path) -> Path:
    return state_dir / "agent" / "agent.yaml"


def prepare_central(stack_env: Mapping[str, str], state_dir: Path) -> dict[str, str]:
    """Migrate, ensure the admin and the demo city and camera, and (if the agent is not
    enrolled yet) make an enrolment token. Idempotent. Returns the ids."""
    env = central_env(stack_env, state_dir)
    run_checked([_bin("gtvision-central"), "migrate"], env=env, timeout_s=120, what="migrate")
    email, password = admin_login(state_dir)
    argv = [_bin("gtvision-central"), "bootstrap", "--admin-email", email,
            "--admin-password", password, "--camera-url", stack_env["CAMERA_RTSP_URL"]]  # fmt: skip
    if not enroll_credentials(state_dir).exists():
        argv.append("--enrolment-token")
    out = run_checked(argv, env=env, timeout_s=60, what="bootstrap")
    ids: dict[str, str] = json.loads(out[out.index("{") :])
    return ids


def enroll_credentials(state_dir: Path) -> Path:
    return agent_config_path(state_dir).parent / "credentials.yaml"


def enroll_agent(state_dir: Path, token: str) -> None:
    """Enrol the demo agent as an installer would: `gtvision-agent enroll` with the token."""
    run_checked(
        [_bin("gtvision-agent"), "enroll", "--central", f"http://{HOST}:{API_PORT}",
         "--token", token, "--config", str(agent_config_path(state_dir))],
        timeout_s=60, what="gtvision-agent enroll",
    )  # fmt: skip


def write_agent_config(stack_env: Mapping[str, str], state_dir: Path, camera_id: str) -> None:
    """The agent's own settings: data dir and cameras (credentials.yaml holds the rest)."""
    path = agent_config_path(state_dir)
    config = {
        "data_dir": str(path.parent / "data"),
        "cameras": {
            "camera_1": {
                "id": camera_id,
                "name": "Câmera de teste",
                "url": stack_env["CAMERA_RTSP_URL"],
                "record": {"segment_seconds": 4},
                # The simulated road has Brazilian plates: read them (5 fps, built-in model).
                "lpr": {"enabled": True},
            }
        },
    }
    text = yaml.safe_dump(config, allow_unicode=True, sort_keys=False)
    # Rewriting identical text would still wake the agent's hot reload: write only changes.
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


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


def _start_central(
    stack_env: Mapping[str, str], state_dir: Path, log: Path, command: str, url: str
) -> RunningService:
    proc = start_process(
        [_bin("gtvision-central"), command], log, env=central_env(stack_env, state_dir)
    )
    return RunningService(name=f"central-{command}", procs=[ProcRef.of(proc.pid)], url=url, log=log)


def start_central_ingest(
    stack_env: Mapping[str, str], state_dir: Path, log: Path
) -> RunningService:
    return _start_central(stack_env, state_dir, log, "ingest", "(consumer)")


def start_central_worker(
    stack_env: Mapping[str, str], state_dir: Path, log: Path
) -> RunningService:
    return _start_central(stack_env, state_dir, log, "worker", "(clips, recordings)")


def start_agent(state_dir: Path, log: Path) -> RunningService:
    config = agent_config_path(state_dir)
    proc = start_process([_bin("gtvision-agent"), "run", "--config", str(config)], log)
    return RunningService(
        name="agent",
        procs=[ProcRef.of(proc.pid)],
        url=f"(records the camera; config {config})",
        log=log,
    )


SYSTEM_SERVICES = ("central-api", "central-ingest", "central-worker", "agent")


def up(stack: Stack, on_event: Callable[[str, str, float], None] | None = None) -> dict[str, str]:
    """Prepare central, start its API and ingest, enrol the agent if needed and start it; each
    process unless it already runs. Records them in the stack so `status` and `down` cover
    them. Idempotent."""
    env = stack.env()
    ids = prepare_central(env, stack.state_dir)
    logs = stack.state_dir / "logs"
    starters: dict[str, Callable[[Path], RunningService]] = {
        "central-api": lambda log: start_central_api(env, stack.state_dir, log),
        "central-ingest": lambda log: start_central_ingest(env, stack.state_dir, log),
        "central-worker": lambda log: start_central_worker(env, stack.state_dir, log),
        "agent": lambda log: start_agent(stack.state_dir, log),
    }
    for name in SYSTEM_SERVICES:
        if name == "agent":
            if "enrolment_token" in ids:
                enroll_agent(stack.state_dir, ids["enrolment_token"])
            write_agent_config(env, stack.state_dir, ids["camera_id"])
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
