"""The private PostgreSQL / Redis / Kafka servers of walletd.adapters.embedded, for real."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from walletd.adapters.embedded import (
    EmbeddedServiceError,
    EmbeddedStack,
    PostgresServer,
    RedisServer,
    ServiceEndpoints,
    find_pg_bindir,
    resolve_services,
)

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------- helpers


def _pg_fetch(url: str, *statements: str) -> list[object]:
    """Run statements on one connection; return the first column of the last one."""

    async def run() -> list[object]:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            for statement in statements[:-1]:
                await connection.execute(statement)
            return [row[0] for row in await connection.fetch(statements[-1])]
        finally:
            await connection.close()

    return asyncio.run(run())


def _create_topic(bootstrap: str) -> str:
    topic = f"embedded-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(15)
    return topic


def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, key=b"k", value=value)
    assert producer.flush(15) == 0


def _consume_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"embedded-test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        values: list[bytes] = []
        deadline = time.monotonic() + 15
        while len(values) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                values.append(message.value() or b"")
        return values
    finally:
        consumer.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # an orphan killed in a container whose PID 1 does not reap stays a zombie
    return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """A stack of our own for fault injection (the session stack may be external)."""
    # As root, pytest's 0700 basetemp is unreachable for the postgres user, so this also
    # covers the "data directory in a fresh temp dir" path.
    services = EmbeddedStack(tmp_path_factory.mktemp("embedded"), fast=True)
    services.start()
    try:
        yield services
    finally:
        services.stop()


# --------------------------------------------------------------------------- tests


def test_session_services_answer(endpoints: ServiceEndpoints) -> None:
    assert _pg_fetch(endpoints.database_url, "select 1") == [1]
    assert _pg_fetch(endpoints.database_url, "select current_database()") == ["walletd"]

    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        assert client.ping()
        client.set("embedded:key", b"value")
        assert client.get("embedded:key") == b"value"
    finally:
        client.close()

    topic = _create_topic(endpoints.kafka_bootstrap)
    _produce(endpoints.kafka_bootstrap, topic, b"hello")
    assert _consume_all(endpoints.kafka_bootstrap, topic, 1) == [b"hello"]


def test_session_stack_is_on_loopback(stack: EmbeddedStack) -> None:
    for server in stack.servers:
        assert server.pid is not None
        assert server.pidfile.read_text().split() == [str(server.pid), str(os.getpid())]
        listening = {
            c.laddr.port: c.laddr.ip
            for c in psutil.net_connections("tcp4")
            if c.status == psutil.CONN_LISTEN and isinstance(c.laddr, tuple) and c.laddr
        }
        assert listening.get(server.port) == "127.0.0.1"


def test_postgres_immediate_restart_keeps_committed_data(private_stack: EmbeddedStack) -> None:
    pg = private_stack.postgres
    assert pg is not None
    _pg_fetch(
        pg.url, "create table survivors (v int)", "insert into survivors values (42)", "select 0"
    )
    old_pid, port = pg.pid, pg.port

    pg.restart(immediate=True)

    assert pg.pid is not None
    assert pg.pid != old_pid
    assert pg.port == port
    assert old_pid is not None
    assert _gone(old_pid)
    assert "immediate shutdown request" in pg.log_path.read_text()
    assert _pg_fetch(pg.url, "select v from survivors") == [42]


def test_kafka_pause_and_resume(private_stack: EmbeddedStack) -> None:
    kafka = private_stack.kafka
    assert kafka is not None
    topic = _create_topic(kafka.bootstrap)
    _produce(kafka.bootstrap, topic, b"before-pause")

    kafka.pause()
    try:
        assert psutil.Process(kafka.pid).status() == psutil.STATUS_STOPPED
        with pytest.raises(KafkaException):
            AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=1.0)
    finally:
        kafka.resume()

    assert not kafka.paused
    _produce(kafka.bootstrap, topic, b"after-resume")
    assert _consume_all(kafka.bootstrap, topic, 2) == [b"before-pause", b"after-resume"]


def test_redis_stop_and_start_on_same_port(private_stack: EmbeddedStack) -> None:
    server = private_stack.redis
    assert server is not None
    port, old_pid = server.port, server.pid
    server.stop()
    assert server.pid is None
    assert old_pid is not None
    assert _gone(old_pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

    server.start()

    assert server.port == port
    client = redis.Redis.from_url(server.url)
    try:
        assert client.ping()
    finally:
        client.close()


def test_stop_leaves_no_process(private_stack: EmbeddedStack) -> None:
    pids = [server.pid for server in private_stack.servers]
    assert all(pid is not None for pid in pids)
    postmaster = private_stack.postgres.pid if private_stack.postgres else None
    assert postmaster is not None
    children = [c.pid for c in psutil.Process(postmaster).children()]
    assert children, "postgres should have background processes"

    private_stack.stop()

    for pid in [*pids, *children]:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert all(not server.pidfile.exists() for server in private_stack.servers)


def test_wheel_flavor_postgres_is_18(tmp_path: Path) -> None:
    pg = PostgresServer(tmp_path, flavor="wheel", fast=True)
    assert pg.version.startswith("18.")
    pg.start()
    try:
        assert pg.pid is not None
        version = _pg_fetch(pg.url, "show server_version")[0]
        assert isinstance(version, str)
        assert version.startswith(pg.version)
    finally:
        pid = pg.pid
        pg.stop()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_system_flavor_reports_its_version(tmp_path: Path) -> None:
    try:
        bindir = find_pg_bindir("system")
    except EmbeddedServiceError:
        pytest.skip("no system PostgreSQL installed")
    pg = PostgresServer(tmp_path, flavor="system")
    assert pg.bindir == bindir
    assert pg.major == int(pg.version.split(".")[0]) >= 10


def test_failed_start_raises_with_log_tail(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = RedisServer(tmp_path, port=port, start_timeout=10)
        with pytest.raises(EmbeddedServiceError) as caught:
            server.start()
    message = str(caught.value)
    expected = f"redis exited with code 1 while starting on port {port}; last lines of "
    assert message.splitlines()[0].startswith(expected)
    assert "Address already in use" in message
    assert server.pid is None


def test_stale_server_of_crashed_run_is_stopped_only_when_it_matches(tmp_path: Path) -> None:
    crashed = (
        "import os, sys; from pathlib import Path; "
        "from walletd.adapters.embedded import RedisServer; "
        "r = RedisServer(Path(sys.argv[1])); r.start(); print(r.pid, flush=True); os._exit(0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", crashed, str(tmp_path)], capture_output=True, text=True, check=True
    )
    orphan = int(out.stdout.split()[0])
    assert not _gone(orphan)

    # a pidfile naming an unrelated process must not get that process killed
    with subprocess.Popen(["sleep", "30"], start_new_session=True) as bystander:
        other = tmp_path / "other"
        (other / "redis").mkdir(parents=True)
        (other / "redis" / "redis.pid").write_text(f"{bystander.pid}\n")
        innocent = RedisServer(other)
        survivor = RedisServer(tmp_path)
        try:
            innocent.start()
            survivor.start()
            assert bystander.poll() is None
            assert _gone(orphan)
            assert survivor.pid != orphan
        finally:
            innocent.stop()
            survivor.stop()
            bystander.send_signal(signal.SIGTERM)


def test_run_dir_of_a_live_process_is_not_taken_over(tmp_path: Path) -> None:
    owner_code = (
        "import sys; from pathlib import Path; "
        "from walletd.adapters.embedded import RedisServer; "
        "r = RedisServer(Path(sys.argv[1])); r.start(); print(r.pid, flush=True); sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", owner_code, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as owner:
        assert owner.stdout is not None
        assert owner.stdin is not None
        theirs = int(owner.stdout.readline())
        with pytest.raises(EmbeddedServiceError, match="belongs to running process"):
            RedisServer(tmp_path).start()
        assert not _gone(theirs)
        owner.stdin.close()  # the owner exits normally; its atexit hook stops its server
        assert owner.wait(30) == 0
    assert _gone(theirs)


def test_resolve_services_uses_external_endpoints(tmp_path: Path) -> None:
    env = {
        "WALLETD_DATABASE_URL": "postgresql://u@db.example:5432/w",
        "WALLETD_REDIS_URL": "redis://cache.example:6379/0",
        "WALLETD_KAFKA_BOOTSTRAP": "kafka.example:9092",
    }
    found, services = resolve_services(tmp_path, env=env)
    try:
        assert services.servers == []
        assert found == ServiceEndpoints(
            "postgresql://u@db.example:5432/w", "redis://cache.example:6379/0", "kafka.example:9092"
        )
        assert services.endpoints == found
    finally:
        services.stop()
