"""Tests of devstack.redis_server against real redis-server processes."""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError
from redis.retry import Retry

from devstack.process import port_is_open
from devstack.redis_server import (
    DEFAULT_NOTIFY_KEYSPACE_EVENTS,
    RedisCluster,
    RedisServer,
    start_redis,
    start_redis_cluster,
)
from devstack.tls import TlsFiles, make_tls_files


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    started = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    started = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"), primaries=3)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[RedisServer]:
    started = start_redis(tmp_path_factory.mktemp("redis-tls"), tls=tls_files)
    try:
        yield started
    finally:
        started.stop()


# For clients expected to fail: redis-py would otherwise retry connection errors with backoff.
NO_RETRY = Retry(NoBackoff(), 0)


def collect_messages(pubsub: redis.client.PubSub, expected_count: int, timeout_s: float = 10.0) -> list[dict]:
    messages: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < expected_count and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            messages.append(message)
    return messages


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_redis_set_get(server: RedisServer) -> None:
    client = server.client(decode_responses=True)

    client.set("seen:1", "1714557600")

    assert client.get("seen:1") == "1714557600"
    assert server.host == "127.0.0.1"
    assert server.url == f"redis://127.0.0.1:{server.port}/0"


def test_redis_persistence_off(server: RedisServer) -> None:
    client = server.client(decode_responses=True)

    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}


def test_redis_default_notify_flags(server: RedisServer) -> None:
    configured = server.client(decode_responses=True).config_get("notify-keyspace-events")["notify-keyspace-events"]

    # Redis stores the flags in its own order, so compare them as sets.
    assert set(configured) == set(DEFAULT_NOTIFY_KEYSPACE_EVENTS)


def test_redis_keyspace_notification(server: RedisServer) -> None:
    client = server.client(decode_responses=True)
    pubsub = client.pubsub()
    pubsub.psubscribe("__keyspace@0__:notify:*", "__keyevent@0__:*")
    try:
        client.set("notify:set", "1")
        client.set("notify:expiring", "1", px=50)
        messages = collect_messages(pubsub, expected_count=4)
    finally:
        pubsub.close()

    events = [(message["channel"], message["data"]) for message in messages]
    assert ("__keyspace@0__:notify:set", "set") in events
    assert ("__keyspace@0__:notify:expiring", "set") in events
    assert ("__keyspace@0__:notify:expiring", "expire") in events
    assert ("__keyspace@0__:notify:expiring", "expired") in events
    # The default flags have no E, so nothing arrives on keyevent channels.
    assert not [channel for channel, _ in events if channel.startswith("__keyevent@")]


def test_redis_custom_notify_flags(tmp_path: Path) -> None:
    started = start_redis(tmp_path, notify_keyspace_events="E$")
    try:
        client = started.client(decode_responses=True)
        pubsub = client.pubsub()
        pubsub.psubscribe("__keyevent@0__:*", "__keyspace@0__:*")
        client.set("custom", "1")
        messages = collect_messages(pubsub, expected_count=1)
        pubsub.close()
    finally:
        started.stop()

    assert [(message["channel"], message["data"]) for message in messages] == [("__keyevent@0__:set", "custom")]


def test_redis_restart_loses_data(tmp_path: Path) -> None:
    started = start_redis(tmp_path)
    try:
        started.client().set("volatile", "1")
        port_before = started.port
        pid_before = started.process.pid

        started.restart()

        assert started.port == port_before
        assert process_is_gone(pid_before)
        assert started.client().get("volatile") is None
    finally:
        started.stop()


def test_redis_kill_then_start(tmp_path: Path) -> None:
    started = start_redis(tmp_path)
    try:
        pid_before = started.process.pid

        started.kill()

        assert process_is_gone(pid_before)
        assert not port_is_open(started.port)

        started.start()

        assert started.client().ping()
    finally:
        started.stop()


def test_redis_stop_leaves_no_process(tmp_path: Path) -> None:
    started = start_redis(tmp_path)
    pid = started.process.pid

    started.stop()

    assert process_is_gone(pid)
    assert not port_is_open(started.port)


def test_redis_password(tmp_path: Path) -> None:
    started = start_redis(tmp_path, password="s3cret word")
    try:
        assert started.client().ping()
        assert started.url == f"redis://:s3cret%20word@127.0.0.1:{started.port}/0"
        assert redis.Redis.from_url(started.url).ping()
        with pytest.raises(AuthenticationError):
            started.client(password=None, retry=NO_RETRY).get("anything")
    finally:
        started.stop()


def test_redis_acl_file(tmp_path: Path) -> None:
    acl_file = tmp_path / "users.acl"
    acl_file.write_text("user default off\nuser capture on >capture-pw ~* &* +@all\n")

    started = start_redis(tmp_path / "server", acl_file=acl_file)
    try:
        assert started.client(username="capture", password="capture-pw").ping()
        with pytest.raises(AuthenticationError):
            started.client(retry=NO_RETRY).get("anything")
    finally:
        started.stop()


def test_redis_rejects_password_with_acl(tmp_path: Path) -> None:
    acl_file = tmp_path / "users.acl"
    acl_file.write_text("user default on nopass ~* &* +@all\n")

    with pytest.raises(ValueError, match="acl_file"):
        start_redis(tmp_path / "server", password="x", acl_file=acl_file)


def test_cluster_state_ok(cluster: RedisCluster) -> None:
    for node in cluster.nodes:
        info = node.client().cluster("INFO")
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_assigned"] == "16384"
        assert info["cluster_known_nodes"] == "3"
    assert len({node.port for node in cluster.nodes}) == 3


def test_cluster_keys_on_all_primaries(cluster: RedisCluster) -> None:
    client = cluster.client(decode_responses=True)
    for user_id in range(200):
        client.set(f"spread:{user_id}", str(user_id))

    key_counts = [node.client().dbsize() for node in cluster.nodes]

    assert all(count > 0 for count in key_counts), key_counts
    assert sum(key_counts) == 200
    assert client.get("spread:123") == "123"


def test_cluster_startup_nodes(cluster: RedisCluster) -> None:
    startup = [(node.host, node.port) for node in cluster.startup_nodes]

    assert startup == [("127.0.0.1", node.port) for node in cluster.nodes]


def test_tls_connect_with_ca(tls_server: RedisServer) -> None:
    client = tls_server.client(decode_responses=True)

    client.set("tls:key", "v")

    assert client.get("tls:key") == "v"
    assert tls_server.url.startswith("rediss://127.0.0.1:")


def test_tls_rejects_unknown_ca(tls_server: RedisServer) -> None:
    # Without the private CA the client only trusts the system CAs, which did not sign the server certificate.
    client = tls_server.client(ssl_ca_certs=None, retry=NO_RETRY)

    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        client.ping()


def test_tls_rejects_plaintext(tls_server: RedisServer) -> None:
    client = redis.Redis(host=tls_server.host, port=tls_server.port, socket_timeout=2.0, retry=NO_RETRY)

    with pytest.raises(redis.ConnectionError):
        client.ping()


def test_tls_key_matches_cert(tls_files: TlsFiles) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)

    # Raises ssl.SSLError when the private key does not belong to the certificate.
    context.load_cert_chain(str(tls_files.cert_path), str(tls_files.key_path))

    assert oct(tls_files.key_path.stat().st_mode & 0o777) == "0o600"
