"""Fixtures of the operator-tool tests: fresh topics and group per test, on Kafka alone or on the whole stack."""

from __future__ import annotations

import pytest

from ops_helpers import KaskHttp, Ops


@pytest.fixture
def kafka_ops(kafka_server, make_config, tmp_path):
    """Ops on Kafka alone, with the product's topics created."""
    ops = Ops(make_config(kafka_server=kafka_server), tmp_path)
    ops.create_topics()
    yield ops
    ops.stop_daemons()


@pytest.fixture
def stack_ops(redis_server, redis_client, kafka_server, kask_server, make_config, tmp_path):
    """Ops on the whole stack (Redis, Kafka, Kask), with the product's topics created and short rechecks."""
    config = make_config(redis_server=redis_server, kafka_server=kafka_server, kask_server=kask_server,
                         verify={"recheck_rounds": 1, "recheck_delay_s": 0.5},
                         replicator={"commit_interval_s": 0.2})
    ops = Ops(config, tmp_path)
    ops.create_topics()
    yield ops
    ops.stop_daemons()


@pytest.fixture
def kask_http(kask_server) -> KaskHttp:
    return KaskHttp(kask_server.url)
