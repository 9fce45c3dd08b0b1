"""Dev stack: every fixture's service really answers, and Stack up/down/status is idempotent."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import asyncpg
import httpx
import pytest
import redis as redis_lib
from minio import Minio

from devstack import postgres
from devstack.procs import port_open
from devstack.pytest_plugin import CameraInfo, RabbitBroker, S3Info, make_test_state_dir
from devstack.stack import SERVICES, Ports, Stack, StackOptions, default_state_dir


@pytest.mark.timeout(60)
async def test_postgres_answers_and_has_pg_trgm(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_user") == "gtvision"
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        assert await conn.fetchval("SELECT similarity('ABC1D23', 'ABC1D23')") == 1.0
    finally:
        await conn.close()


@pytest.mark.timeout(60)
async def test_pg_db_url_is_a_fresh_empty_database(pg_db_url: str, pg_url: str) -> None:
    assert pg_db_url != pg_url
    conn = await asyncpg.connect(pg_db_url)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        await conn.execute("CREATE EXTENSION pg_trgm")
        await conn.execute("CREATE TABLE t (plate text)")
    finally:
        await conn.close()


@pytest.mark.timeout(60)
async def test_amqp_quorum_queue_publish_confirm_consume(amqp_url: str) -> None:
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        name = f"test.quorum.{uuid.uuid4().hex[:8]}"
        queue = await channel.declare_queue(
            name,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-delivery-limit": 3},
        )
        # With confirms on, publish() returns only once the broker has acked the message.
        await channel.default_exchange.publish(
            aio_pika.Message(b"hello", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=name,
        )
        got: list[bytes] = []
        async with queue.iterator() as it:
            async for message in it:
                async with message.process():
                    got.append(message.body)
                break
        assert got == [b"hello"]
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await conn.close()


@pytest.mark.timeout(60)
async def test_rabbitmq_management_api_knows_gtvision(rabbitmq: RabbitBroker) -> None:
    auth = (rabbitmq.user, rabbitmq.password)
    async with httpx.AsyncClient(base_url=rabbitmq.management_url, auth=auth) as client:
        overview = await client.get("/api/overview")
        assert overview.status_code == 200
        assert overview.json()["rabbitmq_version"].startswith("3.")
        whoami = (await client.get("/api/whoami")).json()
        assert whoami["name"] == "gtvision"
        assert "administrator" in whoami["tags"]


@pytest.mark.timeout(180)
async def test_broker_restart_keeps_durable_queue_and_persistent_message(
    rabbitmq: RabbitBroker,
) -> None:
    name = f"test.durable.{uuid.uuid4().hex[:8]}"
    conn = await aio_pika.connect(rabbitmq.amqp_url)
    channel = await conn.channel(publisher_confirms=True)
    await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    await channel.default_exchange.publish(
        aio_pika.Message(b"survivor", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=name,
    )
    await conn.close()

    await asyncio.to_thread(rabbitmq.stop)
    assert not rabbitmq.running
    await asyncio.to_thread(rabbitmq.start)
    assert rabbitmq.running

    conn = await aio_pika.connect(rabbitmq.amqp_url)
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(name, durable=True, passive=True)
        message = await queue.get(timeout=10, fail=True)
        assert message is not None
        assert message.body == b"survivor"
        await message.ack()
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await conn.close()


@pytest.mark.timeout(60)
def test_s3_bucket_put_get_stat(s3: S3Info) -> None:
    client = Minio(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, secure=False)
    bucket = f"test-{uuid.uuid4().hex[:8]}"
    client.make_bucket(bucket)
    assert client.bucket_exists(bucket)
    data = b"segment bytes " * 1000
    client.put_object(bucket, "a/b/segment.mp4", io.BytesIO(data), len(data), "video/mp4")
    resp = client.get_object(bucket, "a/b/segment.mp4")
    try:
        assert resp.read() == data
    finally:
        resp.close()
        resp.release_conn()
    stat = client.stat_object(bucket, "a/b/segment.mp4")
    assert stat.size == len(data)


@pytest.mark.timeout(30)
def test_redis_ping_set_get(redis_url: str) -> None:
    client = redis_lib.Redis.from_url(redis_url)
    try:
        assert client.ping()
        client.set("gtvision:test", "1")
        assert client.get("gtvision:test") == b"1"
    finally:
        client.close()


@pytest.mark.timeout(180)
def test_camera_serves_the_scene(camera: CameraInfo) -> None:
    assert camera.video.exists()
    truth = json.loads(camera.truth.read_text())
    assert truth["vehicles"]
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "json",
            camera.rtsp_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    stream = json.loads(probe.stdout)["streams"][0]
    assert (stream["codec_name"], stream["width"], stream["height"]) == ("h264", 1280, 720)


# ---- Stack lifecycle --------------------------------------------------------------------------


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    # Reachable by postgres (unlike pytest's 0700 tmp_path), so PG data stays in the state dir.
    path = make_test_state_dir("gtvision-test-cycle-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _redis_cmd(port: int, *args: str) -> bytes:
    client = redis_lib.Redis(host="127.0.0.1", port=port)
    try:
        result: bytes = client.execute_command(*args)
        return result
    finally:
        client.close()


@pytest.mark.timeout(400)
def test_stack_up_status_idempotent_down_up_keeps_data(stack_dir: Path) -> None:
    options = StackOptions(
        pg_fsync=False,
        redis_persist=True,
        camera_seconds=10.0,
        camera_scene_dir=default_state_dir() / "cache" / "scenes",
    )
    stack = Stack(stack_dir, options)
    ports = Ports.free()
    assert ports != Ports()  # never the default ports: a developer's stack may be running
    try:
        stack.up(SERVICES, ports)
        status = {s.name: s for s in stack.status()}
        assert set(status) == set(SERVICES)
        assert all(s.alive for s in status.values()), status
        assert (stack_dir / "stack.json").exists()
        env = stack.env()
        assert (
            env["DATABASE_URL"]
            == f"postgresql://gtvision:gtvision@127.0.0.1:{ports.postgres}/gtvision"
        )
        assert env["AMQP_URL"] == f"amqp://gtvision:gtvision@127.0.0.1:{ports.amqp}/"
        assert env["AMQP_MANAGEMENT_URL"] == f"http://127.0.0.1:{ports.rabbitmq_management}/"
        assert env["S3_ENDPOINT"] == f"127.0.0.1:{ports.s3}"
        assert env["S3_SECURE"] == "false"
        assert env["REDIS_URL"] == f"redis://127.0.0.1:{ports.redis}/0"
        assert env["CAMERA_RTSP_URL"] == f"rtsp://127.0.0.1:{ports.rtsp}/cam1"
        assert Path(env["CAMERA_TRUTH"]).exists()

        # Data written now must survive down/up.
        postgres.psql_url(
            env["DATABASE_URL"], "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)"
        )
        _redis_cmd(ports.redis, "SET", "kept", "yes")
        store = Minio(env["S3_ENDPOINT"], "gtvision", "gtvision-secret", secure=False)
        store.make_bucket("kept")
        store.put_object("kept", "obj", io.BytesIO(b"data"), 4)

        pids_before = {s.name: s.pids for s in stack.status()}
        t0 = time.monotonic()
        stack.up(SERVICES, ports)
        assert time.monotonic() - t0 < 3.0  # nothing to do: only liveness and port checks
        assert {s.name: s.pids for s in stack.status()} == pids_before

        recorded = stack.services()
        assert sorted(stack.down()) == sorted(SERVICES)
        for svc in recorded.values():
            for proc in svc.procs:
                assert not proc.alive(), (svc.name, proc)
        for name, port in ports.as_dict().items():
            assert not port_open(port), f"{name} port {port} still open after down"
        assert not any(s.alive for s in stack.status())
        assert stack.down() == []  # nothing left to stop

        stack.up(SERVICES, ports)
        assert all(s.alive for s in stack.status())
        assert postgres.psql_url(env["DATABASE_URL"], "SELECT x FROM kept").strip() == "42"
        assert _redis_cmd(ports.redis, "GET", "kept") == b"yes"
        resp = store.get_object("kept", "obj")
        try:
            assert resp.read() == b"data"
        finally:
            resp.close()
            resp.release_conn()
    finally:
        stack.down()
    assert not port_open(ports.epmd)
