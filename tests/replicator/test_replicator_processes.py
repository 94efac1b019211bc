"""The replicator as `echoseen replicate` subprocesses: SIGKILL during load and in flight, SIGTERM."""

from __future__ import annotations

import re
import time

import pytest
from helpers import Daemon
from replicator_harness import (RECORDS, StreamProducer, committed_offsets, end_offsets, kask_bodies, kask_config,
                                load_events, missing_or_wrong, newest_seen, read_records, wait_until)

from echoseen import events
from echoseen.kask_body import BodyCodec, BodyFormat

pytestmark = pytest.mark.stack


def records_total(daemon: Daemon) -> float:
    return daemon.metric("echoseen_replicator_records_total")


def newest_below(config, committed: dict[int, int]) -> dict[bytes, str]:
    """The newest seen time per key among the records below the committed offsets."""
    newest: dict[bytes, str] = {}
    for message in read_records(config, config.kafka.topic):
        if message.offset() < committed.get(message.partition(), 0):
            event = events.decode(message.key(), message.value())
            newest[event.key] = max(newest.get(event.key, ""), event.seen_time)
    return newest


def test_two_instances_one_killed(rep_config, tmp_path, unique_wiki):
    first = Daemon(tmp_path / "first", "replicate", rep_config).start()
    second = Daemon(tmp_path / "second", "replicate", rep_config).start()
    stream = StreamProducer(rep_config, unique_wiki, rate_per_s=60, keys=RECORDS)
    try:
        first.wait_ready()
        second.wait_ready()
        stream.start()
        wait_until(lambda: records_total(first) >= 30 and records_total(second) >= 30, 60,
                   "both instances applying records")

        first.kill()
        # The group notices the missing member after session_timeout_s and moves its partitions.
        time.sleep(rep_config.replicator.session_timeout_s + 4)
        sent = stream.stop()
        wait_until(lambda: missing_or_wrong(rep_config, newest_seen(sent)) == {}, 90, "every key in Kask", 2.0)
        wait_until(lambda: committed_offsets(rep_config) == end_offsets(rep_config), 30,
                   "offsets committed to the end")
        assert second.probe("/readyz")[0] == 200
        assert second.metric("echoseen_replicator_rebalances_total", 'kind="assigned"') >= 2
        assert second.stop(timeout_s=30) == 0
    finally:
        stream.stop()
        first.ensure_stopped()
        second.ensure_stopped()


def test_killed_in_flight_applied_after_restart(rep_config, producer, fault_proxy, kask_server, tmp_path,
                                                unique_wiki):
    config = kask_config(rep_config, fault_proxy.url(kask_server.settings.base_uri))
    event_list = load_events(unique_wiki, 20, keys=20)
    first = Daemon(tmp_path / "first", "replicate", config).start()
    try:
        first.wait_ready()
        fault_proxy.set_faults(delay_s=30.0)
        producer.send_all(event_list)
        wait_until(lambda: fault_proxy.stats["delayed"] >= 10, 30, "Kask requests held in the proxy")
        first.kill()
    finally:
        first.ensure_stopped()
    fault_proxy.clear_faults()

    # Read but never written: nothing in Kask and no offset committed past them.
    assert set(missing_or_wrong(config, newest_seen(event_list)).values()) == {"missing"}
    assert set(committed_offsets(config).values()) == {-1001}

    second = Daemon(tmp_path / "second", "replicate", config).start()
    try:
        wait_until(lambda: missing_or_wrong(config, newest_seen(event_list)) == {}, 60, "every key in Kask", 1.0)
        wait_until(lambda: committed_offsets(config) == end_offsets(config), 30, "offsets committed to the end")
        assert second.stop(timeout_s=30) == 0
    finally:
        second.ensure_stopped()


def test_sigterm_finishes_in_flight_and_commits(rep_config, producer, fault_proxy, kask_server, tmp_path,
                                                unique_wiki):
    config = kask_config(rep_config, fault_proxy.url(kask_server.settings.base_uri))
    daemon = Daemon(tmp_path / "replicator", "replicate", config,
                    env={"ECHOSEEN_KASK_HMAC_KEY": "topsecret-hmac-key"}).start()
    try:
        daemon.wait_ready()
        warmup = load_events(unique_wiki, 30, keys=30)
        producer.send_all(warmup)
        wait_until(lambda: missing_or_wrong(config, newest_seen(warmup)) == {}, 60, "warm-up records in Kask", 1.0)

        # A slow Kask: each request takes a second, so the stop finds requests in flight.
        fault_proxy.set_faults(delay_s=1.0)
        slow = load_events(unique_wiki, 200, keys=200, start_step=1000)
        producer.send_all(slow)
        wait_until(lambda: fault_proxy.stats["delayed"] >= 5, 30, "slow requests in flight")
        started = time.monotonic()
        status = daemon.stop(timeout_s=config.replicator.shutdown_timeout_s + 20)
        elapsed_s = time.monotonic() - started
    finally:
        daemon.ensure_stopped()
    fault_proxy.clear_faults()

    assert status == 0, daemon.log()[-3000:]
    log_text = daemon.log()
    assert "effective configuration: " in log_text
    assert f"topic {config.kafka.topic} (4 partitions)" in log_text
    assert "HMAC set" in log_text
    assert "topsecret" not in log_text
    # Bodies carry a MAC made with the key from the environment.
    keyed = BodyCodec(BodyFormat.JSON, b"topsecret-hmac-key")
    for key, body in kask_bodies(config, [event.key for event in warmup]).items():
        assert keyed.decode(body).seen_time is not None, (key, body)
        assert body.split(b".")[1], (key, body)
    # The bound is shutdown_timeout_s for in-flight records plus the commit and the group leave.
    assert elapsed_s < config.replicator.shutdown_timeout_s + 10
    summary = re.search(r"replicator stopped: written=(\d+) .*committed_partitions=(\d+)", daemon.log())
    assert summary, daemon.log()[-3000:]
    assert int(summary.group(1)) >= len(warmup)

    # Every record below the committed offsets is in Kask: the stop committed only finished work.
    committed = committed_offsets(config)
    assert sum(committed.values()) >= len(warmup)
    assert missing_or_wrong(config, newest_below(config, committed)) == {}
