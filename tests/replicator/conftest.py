"""Fixtures of the replicator suites: a configuration on fresh topics, a producer, extra Kask servers, a fault proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from replicator_harness import EventProducer, create_topics

from devstack.faultproxy import FaultProxy


@pytest.fixture
def rep_config(make_config, kafka_server, kask_server):
    """A configuration on fresh topics (4 partitions) and a fresh group, with short retry and commit intervals."""
    config = make_config(kafka_server=kafka_server, kask_server=kask_server,
                         replicator={"retry_base_s": 0.05, "retry_cap_s": 1.0, "commit_interval_s": 0.5,
                                     "shutdown_timeout_s": 10.0, "session_timeout_s": 6.0})
    create_topics(config)
    return config


@pytest.fixture
def producer(rep_config) -> EventProducer:
    return EventProducer(rep_config)


@pytest.fixture
def own_kask(tmp_path: Path, cassandra_server) -> Iterator[object]:
    """A Kask process of this test alone, on the session's Cassandra, so the test may stop it."""
    from devstack.kask import start_kask

    server = start_kask(tmp_path / "own-kask", cassandra_server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fault_proxy(kask_server) -> Iterator[FaultProxy]:
    proxy = FaultProxy(kask_server.base_url, seed=7).start()
    try:
        yield proxy
    finally:
        proxy.stop()
