"""Pytest fixtures running the dev-stack services (lazily, on free ports) for a test session."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack import postgres
from devstack.procs import ProcRef, RunningService, ServiceError
from devstack.stack import Ports, Stack, StackOptions, default_state_dir

USE_STACK_ENV = "GTVISION_TEST_USE_STACK"
TEST_CAMERA_SECONDS = 10.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class S3Info:
    endpoint: str  # host:port, no scheme (as the minio SDK wants it)
    access_key: str
    secret_key: str
    secure: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"


@dataclass(frozen=True)
class CameraInfo:
    rtsp_url: str
    truth: Path
    video: Path

    @property
    def url(self) -> str:
        return self.rtsp_url


class TestServices:
    """One stack for the whole session; each service starts the first time a fixture asks."""

    __test__ = False  # not a test class despite the name

    def __init__(self, stack: Stack, ports: Ports, *, owned: bool) -> None:
        self.stack = stack
        self.ports = ports
        self.owned = owned  # False: the developer's running `up` stack, never stopped here

    def get(self, name: str) -> RunningService:
        if not self.owned:
            svc = self.stack.service(name)
            if svc is None or not Stack.is_running(svc):
                pytest.fail(
                    f"{USE_STACK_ENV}=1 but {name} is not running in {self.stack.state_dir}; "
                    "run `gtvision-dev up` first",
                    pytrace=False,
                )
            return svc
        try:
            return self.stack.up([name], self.ports)[name]
        except ServiceError as exc:
            # A service that cannot start is a broken environment: an error, never a skip.
            pytest.fail(f"could not start {name} for the tests:\n{exc}", pytrace=False)

    def stop(self, name: str) -> None:
        self.stack.stop_service(name)

    def close(self) -> None:
        if self.owned:
            self.stack.down()


class RabbitBroker:
    """The test broker, with stop()/start() for fault tests (data and ports are kept).

    stop() and start() block for several seconds (a graceful RabbitMQ 3.10 stop takes ~6 s,
    a start ~5 s): from async tests call them via `asyncio.to_thread`. A broker a test leaves
    stopped is started again after that test, so one failing fault test cannot cascade.
    """

    def __init__(self, services: TestServices) -> None:
        self._services = services
        svc = services.get("rabbitmq")
        self.amqp_url = svc.url
        self.management_url = svc.info["management_url"]
        self.user = svc.info["user"]
        self.password = svc.info["password"]

    def stop(self) -> None:
        _LEFT_STOPPED.add(self)
        self._services.stop("rabbitmq")

    def start(self) -> None:
        if self._services.owned:
            self._services.get("rabbitmq")
        else:
            stack = self._services.stack
            stack.up(["rabbitmq"], stack.recorded_ports())
        _LEFT_STOPPED.discard(self)

    @property
    def running(self) -> bool:
        svc = self._services.stack.service("rabbitmq")
        return svc is not None and Stack.is_running(svc)


_LEFT_STOPPED: set[RabbitBroker] = set()


@pytest.fixture(autouse=True)
def _restart_brokers_left_stopped() -> Iterator[None]:
    yield
    for broker in list(_LEFT_STOPPED):
        broker.start()


OWNER_FILE = "owner.json"
TEST_DIR_PREFIX = "gtvision-test-"


def make_test_state_dir(prefix: str = TEST_DIR_PREFIX + "stack-") -> Path:
    """A fresh state dir for a throwaway stack, tagged with this process as its owner.

    Not tmp_path_factory: pytest's base temp dir is 0700 root, which postgres cannot enter.
    """
    if not prefix.startswith(TEST_DIR_PREFIX):
        raise ValueError(f"prefix must start with {TEST_DIR_PREFIX!r}")
    reap_stale_test_stacks()
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)  # noqa: S103 - postgres must traverse it; nothing secret
    (path / OWNER_FILE).write_text(json.dumps(ProcRef.of(os.getpid()).to_json()))
    return path


def reap_stale_test_stacks() -> None:
    """Stop and delete test stacks whose pytest process died without tearing them down.

    A killed session (SIGKILL, CI timeout) cannot run fixture teardown; its servers keep
    running in their own sessions. The next session cleans them up by their recorded PIDs.
    """
    for owner_file in Path(tempfile.gettempdir()).glob(TEST_DIR_PREFIX + "*/" + OWNER_FILE):
        try:
            owner = ProcRef.from_json(json.loads(owner_file.read_text()))
        except (OSError, ValueError, KeyError):
            continue
        if owner.alive():
            continue  # another live session (or this one)
        state_dir = owner_file.parent
        log.warning("cleaning up test stack %s left by dead pid %d", state_dir, owner.pid)
        try:
            Stack(state_dir).down()
        except Exception:  # a broken leftover must not break this session
            log.exception("could not stop the leftover stack in %s", state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def devstack_services() -> Iterator[TestServices]:
    """The session's services (started lazily by the fixtures below, stopped at the end)."""
    if os.environ.get(USE_STACK_ENV) == "1":
        yield TestServices(Stack(default_state_dir()), Ports(), owned=False)
        return
    state_dir = make_test_state_dir()
    options = StackOptions(
        pg_fsync=False,
        redis_persist=False,
        camera_seconds=TEST_CAMERA_SECONDS,
        # Scene renders are deterministic and slow-ish: share them between sessions.
        camera_scene_dir=default_state_dir() / "cache" / "scenes",
    )
    services = TestServices(Stack(state_dir, options), Ports.free(), owned=True)
    try:
        yield services
    finally:
        services.close()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(devstack_services: TestServices) -> str:
    """URL of the `gtvision` database (owner gtvision, CREATEDB) on a session PostgreSQL."""
    return devstack_services.get("postgres").url


@pytest.fixture
def pg_db_url(pg_url: str) -> Iterator[str]:
    """URL of a fresh, empty database for this test only (dropped afterwards)."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    postgres.psql_url(pg_url, f'CREATE DATABASE "{name}"')
    yield pg_url.rsplit("/", 1)[0] + "/" + name
    with contextlib.suppress(ServiceError):
        postgres.psql_url(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def rabbitmq(devstack_services: TestServices) -> RabbitBroker:
    """The session broker: amqp_url, management_url, user, password, stop(), start()."""
    return RabbitBroker(devstack_services)


@pytest.fixture(scope="session")
def amqp_url(rabbitmq: RabbitBroker) -> str:
    return rabbitmq.amqp_url


@pytest.fixture(scope="session")
def s3(devstack_services: TestServices) -> S3Info:
    """S3 endpoint (host:port) and credentials of the session's S3 server."""
    svc = devstack_services.get("s3")
    return S3Info(
        endpoint=svc.info["endpoint"],
        access_key=svc.info["access_key"],
        secret_key=svc.info["secret_key"],
    )


@pytest.fixture(scope="session")
def redis_url(devstack_services: TestServices) -> str:
    return devstack_services.get("redis").url


@pytest.fixture(scope="session")
def camera(devstack_services: TestServices) -> CameraInfo:
    """An RTSP camera looping a synthetic scene (10 s, 720p) with its ground-truth file."""
    svc = devstack_services.get("camera")
    return CameraInfo(
        rtsp_url=svc.url, truth=Path(svc.info["truth"]), video=Path(svc.info["video"])
    )
