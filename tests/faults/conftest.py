"""Fixtures of the fault suite: pipelines on the session's servers, and servers a test may break on its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fault_harness import Pipeline


@pytest.fixture
def build_pipeline(make_config, tmp_path: Path, redis_server, redis_client, kafka_server,
                   kask_server) -> Iterator[Callable[..., Pipeline]]:
    """A factory of pipelines; servers not passed are the session's (its Redis flushed for this test).

    Keyword arguments besides the servers and ``kask_url`` override configuration sections, as in make_config.

    Every daemon a pipeline started is killed at the end of the test if it still runs.
    """
    built: list[Pipeline] = []
    session_servers = (redis_server, kafka_server, kask_server)

    def build(redis_server=None, kafka_server=None, kask_server=None, kask_url: str | None = None,
              **sections) -> Pipeline:
        servers = [given or default for given, default in zip((redis_server, kafka_server, kask_server),
                                                               session_servers)]
        pipeline = Pipeline.build(make_config, tmp_path / f"pipeline-{len(built)}", *servers, kask_url=kask_url,
                                  **sections)
        built.append(pipeline)
        return pipeline

    yield build
    for pipeline in built:
        pipeline.close()


@pytest.fixture
def private_redis(tmp_path: Path):
    """A Redis of this test alone, so it may be restarted."""
    from devstack.redis_server import start_redis

    server = start_redis(tmp_path / "private-redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_kafka(tmp_path: Path):
    """A Kafka broker of this test alone, so it may be stopped."""
    from devstack.kafka import start_kafka

    server = start_kafka(tmp_path / "private-kafka")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_kask(tmp_path: Path, cassandra_server):
    """A Kask process of this test alone on the session's Cassandra, so it may be stopped."""
    from devstack.kask import start_kask

    server = start_kask(tmp_path / "private-kask", cassandra_server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kask_proxy(kask_server):
    """A fault-injecting proxy in front of the session's Kask."""
    from devstack.faultproxy import FaultProxy

    proxy = FaultProxy(kask_server.base_url, seed=11).start()
    try:
        yield proxy
    finally:
        proxy.stop()
