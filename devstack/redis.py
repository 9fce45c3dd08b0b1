"""Redis for the dev stack: redis-server bound to 127.0.0.1, optional persistence, stop."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
from pathlib import Path

from devstack.procs import (
    HOST,
    ProcRef,
    RunningService,
    ServiceError,
    start_process,
    stop_procs,
    wait_port,
    wait_until,
)

log = logging.getLogger(__name__)


def redis_url(port: int, db: int = 0) -> str:
    return f"redis://{HOST}:{port}/{db}"


def redis_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise ServiceError("redis-server is missing (apt-get install redis-server)")
    return found


def ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(
    base_dir: Path,
    port: int,
    log_path: Path,
    *,
    persist: bool = False,
    timeout_s: float = 20.0,
) -> RunningService:
    """Start redis-server with its working dir in `base_dir`; AOF persistence if `persist`."""
    base_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        HOST,
        "--dir",
        str(base_dir),
        "--daemonize",
        "no",
        "--logfile",
        "",  # stdout, i.e. our log file
    ]
    if persist:
        argv += ["--save", "60 1", "--appendonly", "yes"]
    else:
        argv += ["--save", "", "--appendonly", "no"]
    proc = start_process(argv, log_path, cwd=base_dir)
    svc = RunningService(
        name="redis",
        procs=[ProcRef.of(proc.pid)],
        url=redis_url(port),
        log=log_path,
        ports={"redis": port},
        info={"dir": str(base_dir), "persist": str(persist).lower()},
    )
    try:
        wait_port(port, timeout_s, proc=proc, log_path=log_path, what="redis")
        wait_until(lambda: ping(port), timeout_s, what="redis PING", log_path=log_path)
    except BaseException:
        stop_redis(svc)
        raise
    return svc


def stop_redis(svc: RunningService, timeout_s: float = 20.0) -> None:
    # SIGTERM makes redis write its AOF/RDB (when enabled) before exiting.
    stop_procs(svc.procs, sig=signal.SIGTERM, timeout_s=timeout_s, name="redis")
