"""RabbitMQ 3.10 (with management) for the dev stack: private epmd, broker, user setup, stop."""

from __future__ import annotations

import base64
import logging
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devstack.procs import (
    HOST,
    ProcRef,
    RunningService,
    ServiceError,
    log_hint,
    port_open,
    run_checked,
    start_process,
    stop_procs,
    wait_port,
    wait_until,
)

log = logging.getLogger(__name__)

# The /usr/sbin wrappers su to the rabbitmq user and ignore our environment; the real scripts
# run as the caller.
RABBIT_BIN = Path(os.environ.get("GTVISION_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
EPMD = Path(os.environ.get("GTVISION_EPMD", "/usr/bin/epmd"))
USER = "gtvision"
PASSWORD = "gtvision"  # noqa: S105 - fixed dev-only credential, loopback only
NODENAME = "gtvision@localhost"


@dataclass(frozen=True)
class RabbitPorts:
    amqp: int
    management: int
    dist: int
    epmd: int

    def as_dict(self) -> dict[str, int]:
        return {
            "amqp": self.amqp,
            "rabbitmq_management": self.management,
            "rabbitmq_dist": self.dist,
            "epmd": self.epmd,
        }


def amqp_url(port: int) -> str:
    return f"amqp://{USER}:{PASSWORD}@{HOST}:{port}/"


def management_url(port: int) -> str:
    return f"http://{HOST}:{port}/"


def broker_env(base_dir: Path, ports: RabbitPorts, nodename: str = NODENAME) -> dict[str, str]:
    """Environment pointing the broker *and* rabbitmqctl at this private node and its files."""
    return {
        "HOME": str(base_dir / "home"),  # holds .erlang.cookie, shared by server and CLI
        "RABBITMQ_NODENAME": nodename,
        "RABBITMQ_NODE_IP_ADDRESS": HOST,
        "RABBITMQ_NODE_PORT": str(ports.amqp),
        "RABBITMQ_DIST_PORT": str(ports.dist),
        "RABBITMQ_MNESIA_BASE": str(base_dir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base_dir / "log"),
        "RABBITMQ_CONF_ENV_FILE": str(base_dir / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(base_dir / "rabbitmq"),  # the broker appends .conf
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base_dir / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base_dir / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(base_dir / "rabbit.pid"),
        "ERL_EPMD_PORT": str(ports.epmd),
        "ERL_EPMD_ADDRESS": HOST,
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }


def _write_config(base_dir: Path, ports: RabbitPorts) -> None:
    home = base_dir / "home"
    for d in (home, base_dir / "mnesia", base_dir / "log"):
        d.mkdir(parents=True, exist_ok=True)
    cookie = home / ".erlang.cookie"
    if not cookie.exists():
        cookie.write_text(secrets.token_hex(16))
        os.chmod(cookie, 0o400)  # Erlang refuses a cookie readable by others
    (base_dir / "rabbitmq-env.conf").touch()  # keeps /etc/rabbitmq/rabbitmq-env.conf out
    (base_dir / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = {HOST}:{ports.amqp}\n"
        f"management.tcp.ip = {HOST}\n"
        f"management.tcp.port = {ports.management}\n"
    )
    (base_dir / "enabled_plugins").write_text("[rabbitmq_management].\n")


def _http_status(url: str, user: str, password: str, timeout_s: float = 2.0) -> int | None:
    """HTTP status of a GET with basic auth; None if the server does not answer."""
    req = urllib.request.Request(url)  # noqa: S310 - fixed http://127.0.0.1 URL
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def _ctl(env: dict[str, str], *args: str, timeout_s: float = 60.0) -> str:
    return run_checked(
        [RABBIT_BIN / "rabbitmqctl", *args],
        env=env,
        timeout_s=timeout_s,
        what=f"rabbitmqctl {args[0]}",
    )


def _ensure_user(env: dict[str, str]) -> None:
    log.info("creating RabbitMQ user %s", USER)
    try:
        _ctl(env, "add_user", USER, PASSWORD)
    except ServiceError as exc:
        if "already exists" not in str(exc):
            raise
        _ctl(env, "change_password", USER, PASSWORD)
    _ctl(env, "set_user_tags", USER, "administrator")
    _ctl(env, "set_permissions", "-p", "/", USER, ".*", ".*", ".*")


def _read_pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def start_rabbitmq(
    base_dir: Path,
    ports: RabbitPorts,
    log_path: Path,
    *,
    nodename: str = NODENAME,
    timeout_s: float = 90.0,
) -> RunningService:
    """Start epmd + broker with data in `base_dir` (kept across restarts) and wait until ready."""
    base_dir.mkdir(parents=True, exist_ok=True)
    _write_config(base_dir, ports)
    env = broker_env(base_dir, ports, nodename)
    (base_dir / "rabbit.pid").unlink(missing_ok=True)
    server_log = base_dir / "log" / f"{nodename}.log"

    # Our own epmd, in the foreground: it is then a PID we started and can stop, instead of the
    # daemon the VM would spawn that outlives the broker.
    epmd = start_process([EPMD, "-port", str(ports.epmd), "-address", HOST], log_path, env=env)
    procs = [ProcRef.of(epmd.pid)]
    svc = RunningService(
        name="rabbitmq",
        procs=procs,
        url=amqp_url(ports.amqp),
        log=log_path,
        ports=ports.as_dict(),
        info={
            "management_url": management_url(ports.management),
            "user": USER,
            "password": PASSWORD,
            "nodename": nodename,
            "base_dir": str(base_dir),
            "server_log": str(server_log),
        },
    )
    try:
        wait_port(ports.epmd, 10, proc=epmd, log_path=log_path, what="epmd")
        # The script stays as a parent shell that forwards SIGTERM to the VM (no exec unless
        # RABBITMQ_ALLOW_INPUT, which would attach an Erlang shell to stdin).
        wrapper = start_process([RABBIT_BIN / "rabbitmq-server"], log_path, env=env)
        # Stop order: wrapper (stops the VM gracefully), then VM, then epmd last.
        procs.insert(0, ProcRef.of(wrapper.pid))
        wait_port(ports.amqp, timeout_s, proc=wrapper, log_path=server_log, what="rabbitmq")
        # rabbitmqctl await_startup exits 69 until the node registered; the open AMQP port
        # above means it has.
        _ctl(env, "await_startup", "--timeout", str(int(timeout_s)), timeout_s=timeout_s + 10)
        beam = _read_pid_file(base_dir / "rabbit.pid")
        if beam is not None and beam != wrapper.pid:
            procs.insert(1, ProcRef.of(beam))
        else:
            log.warning("no RabbitMQ VM pid in %s; down will rely on the wrapper", base_dir)
        overview = management_url(ports.management) + "api/overview"
        if _http_status(overview, USER, PASSWORD) != 200:
            # First boot of this data dir (or the management listener is still coming up).
            wait_port(ports.management, 30, proc=wrapper, log_path=server_log, what="management")
            if _http_status(overview, USER, PASSWORD) == 401:
                _ensure_user(env)
            wait_until(
                lambda: _http_status(overview, USER, PASSWORD) == 200,
                30,
                what="RabbitMQ management API",
                log_path=server_log,
            )
    except ServiceError as exc:
        stop_rabbitmq(svc)
        # Boot errors (bad config, port clash) land on stdout before the server log exists.
        raise ServiceError(str(exc) + log_hint(log_path, 15)) from exc
    except BaseException:
        stop_rabbitmq(svc)
        raise
    return svc


def stop_rabbitmq(svc: RunningService, timeout_s: float = 60.0) -> None:
    # Graceful: queues and messages are flushed so a restart keeps durable data.
    stop_procs(svc.procs, sig=signal.SIGTERM, timeout_s=timeout_s, name="rabbitmq")
    epmd_port = svc.ports.get("epmd")
    if epmd_port and port_open(epmd_port):
        # Only reached if an epmd not in our PID list holds the port (e.g. spawned by the VM
        # when ours had died); it has no other users once the broker is gone.
        env = {"ERL_EPMD_PORT": str(epmd_port)}
        subprocess.run(
            [str(EPMD), "-kill"],
            env={**os.environ, **env},
            check=False,
            capture_output=True,
            timeout=10,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and port_open(epmd_port):
            time.sleep(0.05)
    if epmd_port and port_open(epmd_port):
        log.warning("epmd on port %d is still running", epmd_port)
