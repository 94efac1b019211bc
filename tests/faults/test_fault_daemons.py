"""The capture and the replicator killed or stopped under live writes: no seen time lost or moved backwards.

The capture suite checks the same faults up to Kafka, and the replicator suite
checks them with synthetic events. These tests run the whole path, Redis to
Kask, and end with `echoseen verify`.
"""

from __future__ import annotations

import time

import pytest

from fault_harness import DOWN_S, LOAD_S, Load, Pipeline, echo_keys
from helpers import Daemon

pytestmark = pytest.mark.stack


def restart_under_load(pipeline: Pipeline, keys: list[str], first: Daemon, ending: str) -> tuple[Load, Daemon]:
    """Under live writes, end ``first`` (``ending`` is "kill" or "stop"), wait DOWN_S, and start its successor."""
    with Load(pipeline.redis_client, keys) as load:
        time.sleep(LOAD_S)
        if ending == "kill":
            first.kill()
        else:
            assert first.stop(timeout_s=60) == 0
        # Writes meanwhile wait in Redis for a capture (its successor's catch-up scan carries them) or in Kafka.
        time.sleep(DOWN_S)
        second = pipeline.start(first.command)
        time.sleep(LOAD_S)
    return load, second


def test_capture_sigkill_under_load(build_pipeline, unique_wiki):
    pipeline = build_pipeline()
    keys = echo_keys(unique_wiki)
    first, _ = pipeline.start_watched(keys)

    load, second = restart_under_load(pipeline, keys, first, "kill")

    assert load.writes > 0
    assert load.errors == 0
    pipeline.assert_nothing_lost()
    assert second.metric("echoseen_capture_gaps_total", 'reason="startup"') >= 1
    assert second.metric("echoseen_capture_catchup_keys_published_total") > 0
    assert second.stop() == 0


def test_capture_sigterm_under_load(build_pipeline, unique_wiki):
    pipeline = build_pipeline()
    keys = echo_keys(unique_wiki)
    first, _ = pipeline.start_watched(keys)

    _, second = restart_under_load(pipeline, keys, first, "stop")

    assert "capture stopped after" in first.log()
    pipeline.assert_nothing_lost()
    assert second.metric("echoseen_capture_gaps_total", 'reason="startup"') >= 1
    assert second.stop() == 0


def test_replicator_sigkill_under_load(build_pipeline, unique_wiki):
    pipeline = build_pipeline()
    keys = echo_keys(unique_wiki)
    _, first = pipeline.start_watched(keys)

    _, second = restart_under_load(pipeline, keys, first, "kill")

    pipeline.assert_nothing_lost()
    assert second.stop() == 0


def test_replicator_sigterm_under_load(build_pipeline, unique_wiki):
    pipeline = build_pipeline()
    keys = echo_keys(unique_wiki)
    _, first = pipeline.start_watched(keys)

    _, second = restart_under_load(pipeline, keys, first, "stop")

    assert "replicator stopped:" in first.log()
    pipeline.assert_nothing_lost()
    assert second.stop() == 0


def test_two_replicators_one_killed(build_pipeline, unique_wiki):
    pipeline = build_pipeline()
    keys = echo_keys(unique_wiki)
    pipeline.capture()
    doomed = pipeline.replicator("replicator-doomed")
    survivor = pipeline.replicator("replicator-survivor")
    pipeline.watch_keys(keys)

    with Load(pipeline.redis_client, keys):
        time.sleep(LOAD_S)
        doomed.kill()
        # The group moves the killed member's partitions after session_timeout_s.
        time.sleep(pipeline.config.replicator.session_timeout_s + LOAD_S)

    pipeline.assert_nothing_lost()
    assert survivor.metric("echoseen_replicator_rebalances_total", 'kind="assigned"') >= 2
    assert survivor.probe("/readyz")[0] == 200
    assert survivor.stop() == 0
