"""The capture and the replicator killed or stopped under live writes: no seen time lost or moved backwards.

The capture suite checks the same faults up to Kafka, and the replicator suite
with synthetic events; these tests run the whole path, Redis to Kask, and end
with `echoseen verify`.
"""

from __future__ import annotations

import time

import pytest

from fault_harness import DOWN_S, LOAD_S, Load, echo_keys

pytestmark = pytest.mark.stack


def test_capture_sigkill_under_load(build_pipeline, unique_wiki):
    pipeline = build_pipeline()
    keys = echo_keys(unique_wiki)
    first = pipeline.capture()
    pipeline.replicator()
    pipeline.watch_keys(keys)

    with Load(pipeline.redis_client, keys) as load:
        time.sleep(LOAD_S)
        first.kill()
        # Writes while no capture runs reach Kask only through the restarted capture's catch-up scan.
        time.sleep(DOWN_S)
        second = pipeline.capture()
        time.sleep(LOAD_S)

    assert load.writes > 0
    assert load.errors == 0
    pipeline.assert_nothing_lost()
    assert second.metric("echoseen_capture_gaps_total", 'reason="startup"') >= 1
    assert second.metric("echoseen_capture_catchup_keys_published_total") > 0
    assert second.stop() == 0


def test_capture_sigterm_under_load(build_pipeline, unique_wiki):
    pipeline = build_pipeline()
    keys = echo_keys(unique_wiki)
    first = pipeline.capture()
    pipeline.replicator()
    pipeline.watch_keys(keys)

    with Load(pipeline.redis_client, keys):
        time.sleep(LOAD_S)
        assert first.stop(timeout_s=60) == 0
        time.sleep(DOWN_S)
        second = pipeline.capture()
        time.sleep(LOAD_S)

    assert "capture stopped after" in first.log()
    pipeline.assert_nothing_lost()
    assert second.metric("echoseen_capture_gaps_total", 'reason="startup"') >= 1
    assert second.stop() == 0


def test_replicator_sigkill_under_load(build_pipeline, unique_wiki):
    pipeline = build_pipeline()
    keys = echo_keys(unique_wiki)
    pipeline.capture()
    first = pipeline.replicator()
    pipeline.watch_keys(keys)

    with Load(pipeline.redis_client, keys):
        time.sleep(LOAD_S)
        first.kill()
        time.sleep(DOWN_S)
        second = pipeline.replicator()
        time.sleep(LOAD_S)

    pipeline.assert_nothing_lost()
    assert second.stop() == 0


def test_replicator_sigterm_under_load(build_pipeline, unique_wiki):
    pipeline = build_pipeline()
    keys = echo_keys(unique_wiki)
    pipeline.capture()
    first = pipeline.replicator()
    pipeline.watch_keys(keys)

    with Load(pipeline.redis_client, keys):
        time.sleep(LOAD_S)
        assert first.stop(timeout_s=60) == 0
        time.sleep(DOWN_S)
        second = pipeline.replicator()
        time.sleep(LOAD_S)

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
