"""Session fixtures: one real Redis, Kafka, Cassandra and Kask for the whole test run.

Servers start lazily, the first time a test asks for them, and stop at the
end of the session even when tests fail (and at interpreter exit as a last
resort, see devstack.process). Tests isolate themselves with fresh topics,
a flushed Redis database and unique wiki names, so Kask keys never collide.
"""

from __future__ import annotations

import itertools
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from echoseen import config as config_module

# Lets every suite import the shared helpers as `import helpers`. Appended, not prepended, so the
# test folders named like the packages (tests/capture, tests/replicator) never shadow them.
sys.path.append(str(Path(__file__).resolve().parent))

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def redis_server(stack_dir: Path) -> Iterator["object"]:
    from devstack.redis_server import start_redis

    server = start_redis(stack_dir / "redis", notify_keyspace_events="Kg$xe")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka_server(stack_dir: Path) -> Iterator["object"]:
    from devstack.kafka import start_kafka

    server = start_kafka(stack_dir / "kafka")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cassandra_server(stack_dir: Path) -> Iterator["object"]:
    from devstack.cassandra import create_kask_schema, start_cassandra

    # A short commit-log sync period, so a node killed by a fault test keeps what it acknowledged.
    server = start_cassandra(stack_dir / "cassandra", commitlog_sync_period_ms=1000)
    create_kask_schema(server)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kask_server(stack_dir: Path, cassandra_server) -> Iterator["object"]:
    from devstack.kask import start_kask

    server = start_kask(stack_dir / "kask", cassandra_server)
    yield server
    server.stop()


@pytest.fixture
def unique_wiki() -> str:
    """A wiki database name no other test uses, so Kask keys of different tests never collide."""
    return f"t{next(_counter)}x{uuid.uuid4().hex[:8]}wiki"


@pytest.fixture
def redis_client(redis_server):
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def topic_names() -> dict[str, str]:
    suffix = f"{next(_counter)}-{uuid.uuid4().hex[:8]}"
    return {
        "topic": f"test.events.{suffix}",
        "dead_letter_topic": f"test.dlq.{suffix}",
        "state_topic": f"test.state.{suffix}",
        "group_id": f"test-group-{suffix}",
    }


@pytest.fixture
def make_config(tmp_path: Path, topic_names: dict[str, str]) -> Callable[..., config_module.Config]:
    """Build a Config pointing at the session's servers; keyword arguments override sections.

    Example: make_config(redis_server=r, kafka_server=k, capture={"read_batch_size": 10}).
    Servers not passed keep their defaults, so a unit test needs no running service.
    """

    def build(redis_server=None, kafka_server=None, kask_server=None, **sections) -> config_module.Config:
        base = config_module.load(None, environ={})
        redis_section = base.redis
        if redis_server is not None:
            redis_section = replace(redis_section, servers=(f"redis://127.0.0.1:{redis_server.port}/0",))
        kafka_section = replace(base.kafka, topic=topic_names["topic"],
                                dead_letter_topic=topic_names["dead_letter_topic"],
                                state_topic=topic_names["state_topic"], partitions=4)
        if kafka_server is not None:
            kafka_section = replace(kafka_section, bootstrap_servers=kafka_server.bootstrap)
        kask_section = base.kask
        if kask_server is not None:
            kask_section = replace(kask_section, url=kask_server.url)
        config = replace(
            base,
            redis=redis_section,
            kafka=kafka_section,
            kask=kask_section,
            replicator=replace(base.replicator, group_id=topic_names["group_id"], metrics_port=0),
            capture=replace(base.capture, metrics_port=0),
            backfill=replace(base.backfill, checkpoint_file=str(tmp_path / "backfill.checkpoint.json")),
        )
        for section_name, overrides in sections.items():
            config = replace(config, **{section_name: replace(getattr(config, section_name), **overrides)})
        config_module.validate(config)
        return config

    return build


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # ECHOSEEN_SKIP_STACK=1 runs only the tests that need no local servers.
    if os.environ.get("ECHOSEEN_SKIP_STACK") != "1":
        return
    skip = pytest.mark.skip(reason="ECHOSEEN_SKIP_STACK=1")
    for item in items:
        if "stack" in item.keywords:
            item.add_marker(skip)
