"""The replicator end to end in-process: Kafka records in, Kask bodies out, offsets committed."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from replicator_harness import (RECORDS, committed_offsets, delete, echo_key, end_offsets, kask_bodies, kask_config,
                                kask_post, load_events, missing_or_wrong, newest_seen, running, seen_time, upsert,
                                wait_until)

from echoseen import echo_value
from echoseen.kask_body import BodyCodec

pytestmark = pytest.mark.stack


def all_committed(config, group_id=None):
    return committed_offsets(config, group_id) == end_offsets(config)


def test_replay_leaves_kask_unchanged(rep_config, producer, unique_wiki):
    event_list = load_events(unique_wiki, RECORDS, keys=RECORDS // 3)
    gone = echo_key(unique_wiki, 10_000)
    event_list += [upsert(gone, seen_time(1)), delete(gone, "del", int(2e15)),
                   upsert(echo_key(unique_wiki, 10_001), echo_value.PLACEHOLDER)]
    producer.send_all(event_list)
    expected = newest_seen(event_list)
    expected.pop(gone)

    with running(rep_config) as first:
        first.wait_for_total(len(event_list))
        wait_until(lambda: all_committed(rep_config), 30, "offsets committed to the end")
    assert missing_or_wrong(rep_config, expected) == {}
    keys = list(expected) + [gone, echo_key(unique_wiki, 10_001)]
    before = kask_bodies(rep_config, keys)
    assert before[gone] is None
    assert before[echo_key(unique_wiki, 10_001)] is None

    # Two replays of the whole topic, each in a new group that starts from the earliest offset.
    for replay in ("replay-1", "replay-2"):
        config = replace(rep_config, replicator=replace(rep_config.replicator,
                                                        group_id=f"{rep_config.replicator.group_id}-{replay}"))
        with running(config) as again:
            again.wait_for_total(len(event_list))
            counts = again.counts
        # Only the deleted key is written and deleted again on its way to the same end state.
        assert counts.get("written", 0) == 1, counts
        assert counts.get("deleted", 0) == 1, counts
        assert counts.get("already_applied", 0) == len(expected), counts
        assert kask_bodies(rep_config, keys) == before


def test_older_event_never_overwrites(rep_config, producer, unique_wiki):
    newer_first = echo_key(unique_wiki, 1)
    mediawiki_wrote = echo_key(unique_wiki, 2)
    kask_post(rep_config, mediawiki_wrote, BodyCodec().encode(seen_time(500)))
    producer.send_all([
        upsert(newer_first, seen_time(300)),
        upsert(newer_first, seen_time(100)),
        upsert(mediawiki_wrote, seen_time(400)),
    ])

    with running(rep_config) as instance:
        instance.wait_for_total(3)
        counts = instance.counts
    assert counts == {"written": 1, "stale": 2}
    assert kask_bodies(rep_config, [newer_first, mediawiki_wrote]) == {
        newer_first: BodyCodec().encode(seen_time(300)),
        mediawiki_wrote: BodyCodec().encode(seen_time(500)),
    }


def test_same_key_applied_in_order(rep_config, producer, unique_wiki):
    # One key written, deleted and written again many times: any reordering would end elsewhere.
    key = echo_key(unique_wiki, 1)
    event_list = []
    for step in range(1, 40):
        event_list.append(upsert(key, seen_time(step * 10)))
        if step % 3 == 0:
            version_us = (echo_value.epoch_s_from_ts_mw(seen_time(step * 10)) + 1) * 1_000_000
            event_list.append(delete(key, "del", version_us))
    event_list.append(upsert(key, seen_time(1000)))
    producer.send_all(event_list)

    with running(rep_config) as instance:
        instance.wait_for_total(len(event_list))
        counts = instance.counts
    assert counts == {"written": 40, "deleted": 13}
    assert kask_bodies(rep_config, [key])[key] == BodyCodec().encode(seen_time(1000))


def test_dry_run_changes_nothing(rep_config, producer, unique_wiki):
    event_list = load_events(unique_wiki, 20, keys=10)
    producer.send_all(event_list)
    producer.send_raw(b"poison", b"not json")
    producer.flush()

    with running(rep_config, dry_run=True) as instance:
        instance.wait_for_total(21)
        counts = instance.counts
    assert counts == {"would_write": 20, "would_dead_letter": 1}
    assert set(kask_bodies(rep_config, newest_seen(event_list)).values()) == {None}
    assert set(committed_offsets(rep_config).values()) == {-1001}
    assert set(committed_offsets(rep_config, rep_config.replicator.group_id + ".dry-run").values()) == {-1001}


def test_metrics_and_health(rep_config, producer, unique_wiki):
    event_list = load_events(unique_wiki, 30, keys=10)
    producer.send_all(event_list)
    with running(rep_config) as instance:
        instance.wait_for_total(30)
        wait_until(lambda: instance.http("/readyz")[0] == 200, 15, "readiness")
        wait_until(lambda: instance.metric("echoseen_replicator_consumer_lag_records") == 0
                   and instance.metric("echoseen_replicator_buffered_records") == 0, 15, "zero lag")
        assert instance.http("/healthz")[0] == 200
        assert instance.metric("echoseen_replicator_records_total", 'outcome="written"') == 30
        assert instance.metric("echoseen_replicator_kask_request_duration_seconds_count", 'method="POST"') == 30
        assert instance.metric("echoseen_replicator_end_to_end_delay_seconds_count") == 30
        assert instance.metric("echoseen_replicator_rebalances_total", 'kind="assigned"') >= 1
        assert instance.metric("echoseen_replicator_consumer_lag_seconds") == 0
        assert instance.metric("echoseen_replicator_stopped_partitions") == 0
        assert instance.metric("echoseen_build_info", 'component="replicator"') == 1
        assert instance.metric("echoseen_replicator_offset_commits_total", 'result="ok"') >= 1


def test_startup_requires_topics(make_config, kafka_server, kask_server, caplog):
    from replicator.daemon import Replicator

    config = make_config(kafka_server=kafka_server, kask_server=kask_server)
    with caplog.at_level(logging.ERROR):
        status = Replicator(config).run()
    assert status != 0
    assert "echoseen topics --create" in caplog.text
    assert config.kafka.topic in caplog.text


def test_buffer_limit_pauses_consumption(rep_config, producer, fault_proxy, kask_server, unique_wiki):
    config = kask_config(rep_config, fault_proxy.url(kask_server.settings.base_uri))
    config = replace(config, replicator=replace(config.replicator, max_buffered_records=20, max_in_flight=4))
    fault_proxy.set_faults(delay_s=0.05)
    event_list = load_events(unique_wiki, 200, keys=200)
    producer.send_all(event_list)

    buffered, paused = [], []
    with running(config) as instance:
        def finished() -> bool:
            buffered.append(instance.metric("echoseen_replicator_buffered_records"))
            paused.append(instance.metric("echoseen_replicator_paused_partitions"))
            return instance.total() >= len(event_list)

        wait_until(finished, 120, "every record applied", interval_s=0.1)
    fault_proxy.clear_faults()
    assert max(buffered) <= 20
    assert max(paused) == 4
    assert missing_or_wrong(config, newest_seen(event_list)) == {}
