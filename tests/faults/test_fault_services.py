"""Kafka and Kask failing under live writes while both daemons keep running: no seen time lost or moved backwards.

Kafka and Kask are stopped in servers that belong to the test, so other tests
never see the outage. Slow responses and 5xx responses come from a fault proxy
in front of the session's Kask.
"""

from __future__ import annotations

import logging
import time

import pytest

from devstack.faultproxy import FaultProxy
from echoseen.kafka import RepeatedLineFilter
from fault_harness import (KAFKA_DOWN_S, KASK_DOWN_S, KASK_SLOW_S, LOAD_S, Load, echo_keys,
                           wait_for)
from helpers import now_value

pytestmark = pytest.mark.stack

TTL_S = 31_536_000


def assert_running(*daemons) -> None:
    for daemon in daemons:
        assert daemon.process.poll() is None, f"{daemon.command} exited with {daemon.process.returncode}:\n" \
                                              f"{daemon.log()[-3000:]}"


def test_kafka_broker_stopped(build_pipeline, private_kafka, unique_wiki):
    pipeline = build_pipeline(kafka_server=private_kafka)
    keys = echo_keys(unique_wiki)
    capture, replicator = pipeline.start_watched(keys)

    with Load(pipeline.redis_client, keys):
        time.sleep(LOAD_S)
        stopped_at = time.monotonic()
        private_kafka.restart(downtime_s=KAFKA_DOWN_S)
        outage_s = time.monotonic() - stopped_at
        time.sleep(LOAD_S)

    assert outage_s >= KAFKA_DOWN_S
    assert_running(capture, replicator)
    pipeline.assert_nothing_lost()
    # librdkafka reports every failed reconnect; repeats are held back so an outage cannot flood the log.
    for daemon in (capture, replicator):
        client_lines = [line for line in daemon.log().splitlines() if "echoseen.kafka.client" in line]
        assert len(client_lines) <= 15 + outage_s, f"{daemon.command}: {len(client_lines)} librdkafka lines " \
                                                   f"in a {outage_s:.0f} s outage:\n" + "\n".join(client_lines[:40])
    capture.wait_ready(timeout_s=60)
    replicator.wait_ready(timeout_s=60)
    assert capture.stop() == 0
    assert replicator.stop() == 0


def test_repeated_client_lines_held_back():
    records = []
    line_filter = RepeatedLineFilter(interval_s=60.0)
    for port in (40001, 40002, 40003):
        record = logging.LogRecord("echoseen.kafka.client", logging.ERROR, __file__, 1, "%s [%s] %s",
                                   ("FAIL", "producer-1", f"Connect to 127.0.0.1:{port} failed: refused"), None)
        if line_filter.filter(record):
            records.append(record.getMessage())
    other = logging.LogRecord("echoseen.kafka.client", logging.WARNING, __file__, 1, "%s", ("other 100%",), None)

    assert records == ["FAIL [producer-1] Connect to 127.0.0.1:40001 failed: refused"]
    assert line_filter.filter(other)
    line_filter.interval_s = 0.0
    again = logging.LogRecord("echoseen.kafka.client", logging.ERROR, __file__, 1, "%s [%s] %s",
                              ("FAIL", "producer-1", "Connect to 127.0.0.1:40004 failed: refused"), None)
    assert line_filter.filter(again)
    assert again.getMessage().endswith("refused (2 similar lines held back in the last 0 s)")


def test_kask_stopped(build_pipeline, private_kask, unique_wiki):
    pipeline = build_pipeline(kask_server=private_kask)
    keys = echo_keys(unique_wiki)
    _, replicator = pipeline.start_watched(keys)

    with Load(pipeline.redis_client, keys):
        time.sleep(LOAD_S)
        private_kask.stop()
        time.sleep(KASK_DOWN_S)
        assert replicator.metric("echoseen_replicator_retries_total") > 0
        assert replicator.metric("echoseen_replicator_paused_partitions") > 0
        private_kask.restart()
        time.sleep(LOAD_S)

    assert_running(replicator)
    pipeline.assert_nothing_lost()
    assert replicator.metric("echoseen_replicator_dead_lettered_records_total") == 0
    assert replicator.stop() == 0


def test_kask_slow_past_timeout(build_pipeline, kask_server, kask_proxy, unique_wiki):
    pipeline = build_pipeline(kask_url=kask_proxy.url(kask_server.settings.base_uri), kask={"timeout_s": 1.0})
    keys = echo_keys(unique_wiki)
    _, replicator = pipeline.start_watched(keys)

    with Load(pipeline.redis_client, keys):
        time.sleep(LOAD_S)
        # Short stalls, each holding the requests that arrive during it longer than the client waits.
        deadline = time.monotonic() + KASK_SLOW_S
        while time.monotonic() < deadline:
            kask_proxy.set_faults(delay_s=2.5)
            time.sleep(0.5)
            kask_proxy.clear_faults()
            time.sleep(1.0)
        time.sleep(LOAD_S)

    assert kask_proxy.stats["delayed"] > 0
    assert replicator.metric("echoseen_replicator_retries_total", 'reason="timeout"') > 0
    pipeline.assert_nothing_lost()
    assert replicator.metric("echoseen_replicator_dead_lettered_records_total") == 0
    assert replicator.stop() == 0


def test_kask_write_applied_after_timeout(build_pipeline, kask_server, unique_wiki):
    """A write the replicator gave up on lands later; it must not overwrite a newer seen time of its key."""
    proxy = FaultProxy(kask_server.base_url).start()
    try:
        pipeline = build_pipeline(kask_url=proxy.url(kask_server.settings.base_uri), kask={"timeout_s": 1.0})
        key = f"{unique_wiki}:echo:seen:alert:time:1"
        pipeline.capture()
        replicator = pipeline.replicator()
        pipeline.watch_keys([key])
        client = pipeline.redis_client

        # Writes take 3 s to reach Kask: every POST times out after 1 s, and each one lands 3 s after it was sent.
        proxy.set_faults(delay_s=3.0, delay_methods=("POST", "DELETE"))
        client.setex(key, TTL_S, now_value())
        wait_for(lambda: proxy.stats["delayed"] >= 2, 30, "the replicator to retry a held write")
        # The user opens the popup again a second later, and Kask turns fast again.
        time.sleep(1.1)
        client.setex(key, TTL_S, now_value())
        proxy.clear_faults()
        # Every held write has landed by now.
        time.sleep(4.0)

        assert replicator.metric("echoseen_replicator_retries_total", 'reason="timeout"') > 0
        pipeline.assert_nothing_lost()
        assert replicator.stop() == 0
    finally:
        proxy.stop()


def test_kask_server_errors(build_pipeline, kask_server, kask_proxy, unique_wiki):
    pipeline = build_pipeline(kask_url=kask_proxy.url(kask_server.settings.base_uri))
    keys = echo_keys(unique_wiki)
    _, replicator = pipeline.start_watched(keys)

    with Load(pipeline.redis_client, keys):
        time.sleep(LOAD_S)
        # Half the requests fail before they reach Kask, and a fifth fail after the write happened.
        kask_proxy.set_faults(error_rate=0.5, error_after_rate=0.2)
        time.sleep(KASK_SLOW_S)
        kask_proxy.clear_faults()
        time.sleep(LOAD_S)

    assert kask_proxy.stats["errors_before"] > 0
    assert kask_proxy.stats["errors_after"] > 0
    assert replicator.metric("echoseen_replicator_retries_total", 'reason="http_5xx"') > 0
    pipeline.assert_nothing_lost()
    assert replicator.metric("echoseen_replicator_dead_lettered_records_total") == 0
    assert replicator.stop() == 0
