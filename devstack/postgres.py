"""PostgreSQL 15 for the dev stack: initdb, start as the postgres user, bootstrap role/db, stop."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from devstack.procs import (
    HOST,
    ProcRef,
    RunningService,
    ServiceError,
    log_hint,
    run_checked,
    start_process,
    stop_procs,
    wait_port,
    wait_until,
)

log = logging.getLogger(__name__)

PG_BIN = Path(os.environ.get("GTVISION_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"  # initdb/postgres refuse to run as root
DB_USER = "gtvision"
DB_PASSWORD = "gtvision"  # noqa: S105 - fixed dev-only credential, loopback only
DB_NAME = "gtvision"


def server_user() -> str | None:
    """The OS user to run the server as: postgres when we are root, else ourselves."""
    return OS_USER if os.geteuid() == 0 else None


def _as_user_kwargs() -> dict[str, Any]:
    user = server_user()
    return {"user": user, "group": user, "extra_groups": []} if user else {}


def pg_url(port: int, database: str = DB_NAME) -> str:
    return f"postgresql://{DB_USER}:{DB_PASSWORD}@{HOST}:{port}/{database}"


def traversable_by_postgres(path: Path) -> bool:
    """Whether the postgres user can reach `path` (every ancestor needs +x for it)."""
    # Asking the kernel as that user is exact (ACLs, groups) where mode-bit arithmetic is not.
    if server_user() is None:
        return True  # the server runs as us
    res = subprocess.run(["/usr/bin/test", "-x", str(path)], check=False, **_as_user_kwargs())
    return res.returncode == 0


def choose_base_dir(preferred: Path) -> Path:
    """`preferred` if postgres can reach it, else a fresh directory under /tmp.

    A checkout under /root (mode 0700) or a pytest tmp_path is not reachable by postgres, and
    the server must own and enter its data directory.
    """
    preferred.parent.mkdir(parents=True, exist_ok=True)
    if traversable_by_postgres(preferred.parent):
        return preferred
    fallback = Path(tempfile.mkdtemp(prefix="gtvision-pg-"))
    os.chmod(fallback, 0o700)
    if server_user():
        shutil.chown(fallback, OS_USER, OS_USER)
    log.warning(
        "%s is not reachable by the postgres user; keeping PostgreSQL data in %s instead",
        preferred,
        fallback,
    )
    return fallback


def _as_postgres_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if server_user():
        shutil.chown(path, OS_USER, OS_USER)
    os.chmod(path, 0o700)


def _initdb(data_dir: Path, log_path: Path) -> None:
    if (data_dir / "PG_VERSION").exists():
        return
    if data_dir.exists():
        # A half-written cluster from an interrupted initdb: initdb refuses non-empty dirs.
        shutil.rmtree(data_dir)
    log.info("initdb %s", data_dir)
    with open(log_path, "ab") as out:
        res = subprocess.run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                # Trust only on the unix socket (used to bootstrap); passwords over TCP.
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ],
            cwd=str(data_dir.parent),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            **_as_user_kwargs(),
        )
    if res.returncode != 0:
        raise ServiceError(f"initdb failed with code {res.returncode}" + log_hint(log_path))


# Built from the module constants above only, never from input.
_BOOTSTRAP_SQL = f"""
SELECT 'CREATE ROLE {DB_USER} LOGIN CREATEDB PASSWORD ''{DB_PASSWORD}'''
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DB_USER}')\\gexec
ALTER ROLE {DB_USER} LOGIN CREATEDB PASSWORD '{DB_PASSWORD}';
SELECT 'CREATE DATABASE {DB_NAME} OWNER {DB_USER}'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DB_NAME}')\\gexec
"""  # noqa: S608


def _psql_socket(sock_dir: Path, port: int, sql: str) -> str:
    return run_checked(
        [
            PG_BIN / "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            sock_dir,
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-f",
            "-",
        ],
        input_text=sql,
        what="psql bootstrap",
        timeout_s=30,
    )


def is_ready(sock_dir: Path, port: int) -> bool:
    res = subprocess.run(
        [str(PG_BIN / "pg_isready"), "-q", "-h", str(sock_dir), "-p", str(port)],
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return res.returncode == 0


def start_postgres(
    base_dir: Path,
    port: int,
    log_path: Path,
    *,
    fsync: bool = True,
    timeout_s: float = 60.0,
) -> RunningService:
    """Init (once) and start a cluster in `base_dir/data`, socket in `base_dir`; wait until ready.

    `base_dir` must be reachable by the postgres user (see `choose_base_dir`).
    """
    _as_postgres_dir(base_dir)
    data_dir = base_dir / "data"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _initdb(data_dir, log_path)
    argv: list[str | os.PathLike[str]] = [
        PG_BIN / "postgres",
        "-D",
        data_dir,
        "-c",
        f"listen_addresses={HOST}",
        "-k",
        base_dir,
        "-p",
        str(port),
    ]
    if not fsync:
        # Throwaway test clusters: durability costs time and disk I/O for nothing.
        argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    proc = start_process(argv, log_path, cwd=base_dir, user=server_user())
    svc = RunningService(
        name="postgres",
        procs=[ProcRef.of(proc.pid)],
        url=pg_url(port),
        log=log_path,
        ports={"postgres": port},
        info={"data_dir": str(data_dir), "socket_dir": str(base_dir)},
    )
    try:
        wait_port(port, timeout_s, proc=proc, log_path=log_path, what="postgres")

        def ready() -> bool:
            if proc.poll() is not None:
                raise ServiceError(
                    f"postgres exited with code {proc.returncode}" + log_hint(log_path)
                )
            return is_ready(base_dir, port)

        # The port opens before recovery/startup finishes; pg_isready says when it accepts.
        wait_until(ready, timeout_s, what="postgres to accept connections", log_path=log_path)
        _psql_socket(base_dir, port, _BOOTSTRAP_SQL)
    except BaseException:
        stop_postgres(svc)
        raise
    return svc


def stop_postgres(svc: RunningService, timeout_s: float = 30.0) -> None:
    # SIGINT = "fast" shutdown; SIGTERM ("smart") would wait for every client to disconnect.
    stop_procs(svc.procs, sig=signal.SIGINT, timeout_s=timeout_s, name="postgres")


def psql_url(url: str, sql: str, timeout_s: float = 30.0) -> str:
    """Run SQL over TCP with a connection URL (e.g. CREATE DATABASE for a test)."""
    return run_checked(
        [PG_BIN / "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        what="psql",
        timeout_s=timeout_s,
    )
