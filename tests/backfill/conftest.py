"""Fixtures of the backfill suites."""

from __future__ import annotations

import pytest

from echoseen.kafka import admin_client, create_topics


@pytest.fixture
def bf_config(make_config, redis_server, kafka_server):
    """A configuration on fresh topics with short checkpoint intervals and no PING sampling, topics created."""
    config = make_config(redis_server=redis_server, kafka_server=kafka_server,
                         backfill={"checkpoint_interval_s": 0.5, "ping_sample_interval_s": 0,
                                   "progress_log_interval_s": 1.0, "reconnect_timeout_s": 60.0})
    create_topics(config, admin_client(config))
    return config
