"""The capture on a three-primary Redis Cluster, through a failover, and across a Redis restart."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import redis

from capture import state as state_store
from devstack.process import free_port
from devstack.redis_server import start_redis, start_redis_cluster
from echoseen.kafka import admin_client, create_topics
from helpers import Daemon, TopicMirror, now_value, redis_watched_state

pytestmark = pytest.mark.stack


@pytest.fixture
def started_daemons():
    """Every capture a test starts, stopped after it even when an assertion failed."""
    daemons: list[Daemon] = []
    yield daemons
    for daemon in daemons:
        daemon.ensure_stopped()


@pytest.fixture
def cluster(tmp_path):
    cluster = start_redis_cluster(tmp_path / "cluster", primaries=3)
    yield cluster
    cluster.stop()


def start_capture(tmp_path, config, started: list, name="capture") -> Daemon:
    create_topics(config, admin_client(config))
    daemon = Daemon(tmp_path / name, "capture", config).start()
    started.append(daemon)
    daemon.wait_ready()
    return daemon


def fast_capture(make_config, kafka_server, servers, cluster_mode):
    config = make_config(kafka_server=kafka_server,
                         capture={"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 5.0,
                                  "instance_lock_ttl_s": 5.0})
    return replace(config, redis=replace(config.redis, servers=tuple(servers), cluster=cluster_mode))


def assert_mirror_matches(kafka_server, config, state: dict[bytes, bytes], timeout_s: float = 90.0) -> TopicMirror:
    mirror = TopicMirror(kafka_server.bootstrap, config.kafka.topic)
    deadline = time.monotonic() + timeout_s
    while True:
        mirror.catch_up()
        missing = [key for key, value in state.items() if mirror.value(key) != value]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    mirror.close()
    assert not missing, f"{len(missing)} of {len(state)} keys missing or different in Kafka, e.g. {missing[:5]}"
    return mirror


def cluster_state(client: redis.cluster.RedisCluster) -> dict[bytes, bytes]:
    state = {}
    for key in client.scan_iter(match="*:echo:seen:*:time:*", count=1000):
        state[key] = client.get(key)
    return state


def test_cluster_primaries_all_captured(cluster, make_config, kafka_server, tmp_path, started_daemons):
    config = fast_capture(make_config, kafka_server, [cluster.nodes[0].url], cluster_mode=True)
    daemon = start_capture(tmp_path, config, started_daemons)
    assert daemon.log().count("connected to Redis") == 3

    client = cluster.client()
    for index in range(3000):
        client.set(f"enwiki:echo:seen:alert:time:{index}", now_value(), ex=3600)
    client.delete("enwiki:echo:seen:alert:time:0")

    mirror = assert_mirror_matches(kafka_server, config, cluster_state(client))
    sources = {document["source"]["server"] for document in mirror.latest.values()}
    assert len(sources) == 3, f"events came from {sources}, expected all three primaries"
    assert mirror.latest[b"enwiki:echo:seen:alert:time:0"]["op"] == "delete"
    assert daemon.stop() == 0


def test_cluster_failover_followed(cluster, make_config, kafka_server, tmp_path, started_daemons):
    config = fast_capture(make_config, kafka_server, [cluster.nodes[0].url], cluster_mode=True)
    daemon = start_capture(tmp_path, config, started_daemons)
    client = cluster.client()

    # A replica of the first primary, which then takes over by a manual failover.
    primary = cluster.nodes[0]
    primary_id = primary.client().cluster("MYID")
    primary_bus_port = int(primary.client().config_get("cluster-port")["cluster-port"])
    replica = start_redis(tmp_path / "replica", extra_config={
        "cluster-enabled": "yes", "cluster-config-file": str(tmp_path / "replica" / "nodes.conf"),
        "cluster-node-timeout": "2000", "cluster-port": str(free_port())})
    try:
        replica_client = replica.client()
        replica_client.execute_command("CLUSTER", "MEET", primary.host, primary.port, primary_bus_port)
        deadline = time.monotonic() + 30
        while True:
            try:
                replica_client.execute_command("CLUSTER", "REPLICATE", primary_id)
                break
            except redis.ResponseError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        while replica_client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline + 30, "replica never synced"
            time.sleep(0.2)

        for index in range(2000):
            client.set(f"enwiki:echo:seen:alert:time:{index}", now_value(), ex=3600)
        replica_client.execute_command("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + 30
        while replica_client.info("replication").get("role") != "master":
            assert time.monotonic() < deadline, "failover did not complete"
            time.sleep(0.2)

        # Writes during and after the topology change must all arrive.
        writer_client = cluster.client()
        for index in range(2000, 4000):
            for attempt in range(20):
                try:
                    writer_client.set(f"enwiki:echo:seen:alert:time:{index}", now_value(), ex=3600)
                    break
                except (redis.ConnectionError, redis.ResponseError, redis.exceptions.ClusterDownError):
                    time.sleep(0.2)
        deadline = time.monotonic() + 30
        while "became a primary of the cluster" not in daemon.log():
            assert time.monotonic() < deadline, f"capture did not follow the failover:\n{daemon.log()[-3000:]}"
            time.sleep(0.5)

        assert_mirror_matches(kafka_server, config, cluster_state(cluster.client()))
        replica_key = state_store.CAPTURE_PREFIX + f"127.0.0.1:{replica.port}/0"
        deadline = time.monotonic() + 15
        documents = state_store.read_all(config)
        while replica_key not in documents and time.monotonic() < deadline:
            time.sleep(1)  # the capture writes its state once per state_flush_interval_s
            documents = state_store.read_all(config)
        assert replica_key in documents, (replica_key, sorted(documents))
        replica_document = documents[replica_key]
        reasons = {reason for gap in replica_document["open_gaps"] + replica_document["recent_gaps"]
                   for reason in gap["reasons"]}
        assert "topology_change" in reasons
        assert daemon.stop() == 0
    finally:
        replica.stop()


def test_redis_restart_noticed(make_config, kafka_server, tmp_path, started_daemons):
    server = start_redis(tmp_path / "redis")
    try:
        config = fast_capture(make_config, kafka_server, [server.url], cluster_mode=False)
        daemon = start_capture(tmp_path, config, started_daemons)
        client = server.client()
        for index in range(500):
            client.set(f"enwiki:echo:seen:alert:time:{index}", now_value(), ex=3600)

        server.restart(downtime_s=1.0)
        # Writes right after the restart race the capture's resubscription; the gap covers them.
        for index in range(500, 1500):
            client.set(f"enwiki:echo:seen:alert:time:{index}", now_value(), ex=3600)

        assert_mirror_matches(kafka_server, config, redis_watched_state(client))
        deadline = time.monotonic() + 30
        while True:
            documents = state_store.read_all(config)
            gaps = [gap for document in documents.values() if document.get("kind") == "capture"
                    for gap in document["open_gaps"] + document["recent_gaps"]]
            if any("redis_restart" in gap["reasons"] for gap in gaps) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert any("redis_restart" in gap["reasons"] for gap in gaps), gaps
        assert "restarted or failed over" in daemon.log()
        assert daemon.stop() == 0
    finally:
        server.stop()
