"""Process helpers for the dev stack: free ports, port waits, spawning with logs, stop by PID."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service failed to start or become ready; the message carries the log tail."""


@dataclass(frozen=True)
class ProcRef:
    """A PID plus its kernel start time, so a recycled PID is never mistaken for ours."""

    pid: int
    started: int = 0  # /proc/PID/stat field 22 (clock ticks since boot); 0 = unknown

    @classmethod
    def of(cls, pid: int) -> ProcRef:
        return cls(pid, proc_start_ticks(pid) or 0)

    def alive(self) -> bool:
        return pid_alive(self.pid, self.started or None)

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "started": self.started}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcRef:
        return cls(int(data["pid"]), int(data.get("started", 0)))


@dataclass
class RunningService:
    """What `up` started for one service: what to stop, where it listens, where it logs."""

    name: str
    procs: list[ProcRef]  # stop order: the first one is signalled first
    url: str
    log: Path
    ports: dict[str, int] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def alive(self) -> bool:
        """All recorded processes still run (a half-dead service counts as dead)."""
        return bool(self.procs) and all(p.alive() for p in self.procs)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "procs": [p.to_json() for p in self.procs],
            "url": self.url,
            "log": str(self.log),
            "ports": dict(self.ports),
            "info": dict(self.info),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunningService:
        return cls(
            name=str(data["name"]),
            procs=[ProcRef.from_json(p) for p in data.get("procs", [])],
            url=str(data["url"]),
            log=Path(data["log"]),
            ports={str(k): int(v) for k, v in dict(data.get("ports", {})).items()},
            info={str(k): str(v) for k, v in dict(data.get("info", {})).items()},
        )


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' source ports (Linux default 32768-60999)."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port(exclude: Iterable[int] = ()) -> int:
    """A currently unused TCP port on 127.0.0.1, *below* the kernel's ephemeral range.

    Not `bind(0)`: that hands out ephemeral ports, and a client retrying a connect to a dead
    server on such a port can be given that very port as its source and connect to itself
    (TCP simultaneous open). The self-connection then sits in TIME_WAIT and the restarted
    server fails with EADDRINUSE (seen with RabbitMQ restarts).
    """
    taken = set(exclude)
    lo, _ = ephemeral_port_range()
    first = 20000 if lo > 22000 else 10000
    last = max(first + 1000, lo - 1)
    for _ in range(500):
        port = random.randint(first, last)
        if port not in taken and _bindable(port) and not port_open(port):
            return port
    raise ServiceError(f"no free TCP port found in {first}-{last}")


def port_open(port: int, host: str = HOST, timeout_s: float = 0.2) -> bool:
    """Whether something listens on host:port (a self-connection does not count)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect((host, port))
        if sock.getsockname() == sock.getpeername():
            # Nothing listens and the kernel picked the target port as our source port: a
            # self-connection. Reset it (linger 0) so no TIME_WAIT blocks the server's bind.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        return True
    except OSError:
        return False
    finally:
        sock.close()


def wait_port(
    port: int,
    timeout_s: float,
    *,
    host: str = HOST,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    what: str = "service",
) -> None:
    """Poll until the port accepts connections; fail fast if `proc` exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        if proc is not None and proc.poll() is not None:
            raise ServiceError(
                f"{what} exited with code {proc.returncode} before listening on {host}:{port}"
                + log_hint(log_path)
            )
        time.sleep(0.1)
    msg = f"{what} did not listen on {host}:{port} within {timeout_s:.0f}s"
    raise ServiceError(msg + log_hint(log_path))


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    *,
    interval_s: float = 0.1,
    what: str = "condition",
    log_path: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout_s:.0f}s waiting for {what}"
            raise ServiceError(msg + log_hint(log_path))
        time.sleep(interval_s)


def start_process(
    argv: Sequence[str | os.PathLike[str]],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Spawn a long-running server with stdout+stderr appended to `log_path`.

    The child gets its own session so that a Ctrl-C in the shell that ran `gtvision-dev up`
    (or a pytest interrupt) does not reach the servers; they are stopped explicitly by PID.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    log.debug("starting %s (log %s)", " ".join(map(str, argv)), log_path)
    with open(log_path, "ab") as out:
        # The log fd is inherited by the child; closing our copy right after the spawn is fine.
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            # Dropping to `user` keeps the server our direct child (unlike su/sudo wrappers).
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
    _CHILDREN[proc.pid] = proc
    return proc


def proc_start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces/parens: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 overall; state is field 3 = fields[0]


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def pid_alive(pid: int, started: int | None = None) -> bool:
    """True if the PID runs, is not a zombie, and (if given) has the recorded start time."""
    if pid <= 0:
        return False
    _reap(pid)
    state = _proc_state(pid)
    if state is None or state in ("Z", "X"):
        # Zombies count as dead: orphaned servers are reaped by PID 1 only eventually.
        return False
    return not (started is not None and proc_start_ticks(pid) != started)


# Popen objects of the servers we spawned: kept referenced so they are polled (reaped) through
# subprocess itself, which also avoids "subprocess still running" ResourceWarnings on GC.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def track(proc: subprocess.Popen[bytes]) -> None:
    """Adopt a server spawned elsewhere (e.g. the camera) so its exit is reaped like ours."""
    _CHILDREN[proc.pid] = proc


def _reap(pid: int) -> None:
    # A dead child of ours stays a zombie until waited for; poll() collects it.
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def stop_pid(
    pid: int,
    *,
    started: int | None = None,
    sig: signal.Signals = signal.SIGTERM,
    timeout_s: float = 20.0,
    name: str = "process",
) -> bool:
    """Signal, wait up to `timeout_s`, then SIGKILL. Returns True if a process was stopped."""
    if not pid_alive(pid, started):
        return False
    log.info("stopping %s (pid %d) with %s", name, pid, sig.name)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid, started):
            return True
        time.sleep(0.05)
    log.warning("%s (pid %d) ignored %s for %.0fs; sending SIGKILL", name, pid, sig.name, timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 5.0
    while time.monotonic() < end and pid_alive(pid, started):
        time.sleep(0.05)
    return True


def stop_procs(
    procs: Sequence[ProcRef],
    *,
    sig: signal.Signals = signal.SIGTERM,
    timeout_s: float = 20.0,
    name: str = "process",
) -> None:
    for p in procs:
        stop_pid(p.pid, started=p.started or None, sig=sig, timeout_s=timeout_s, name=name)


def tail(path: Path | None, lines: int = 40) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def log_hint(path: Path | None, lines: int = 40) -> str:
    text = tail(path, lines)
    if not text:
        return f" (log: {path})" if path else ""
    return f"\n--- last lines of {path} ---\n{text}"


def run_checked(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
    what: str | None = None,
    input_text: str | None = None,
) -> str:
    """Run a short helper command; raise ServiceError with its output if it fails."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    args = [str(a) for a in argv]
    try:
        res = subprocess.run(
            args,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            input=input_text,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{what or args[0]} timed out after {timeout_s:.0f}s") from exc
    if res.returncode != 0:
        raise ServiceError(
            f"{what or ' '.join(args)} failed with code {res.returncode}:\n{res.stdout}{res.stderr}"
        )
    return res.stdout
