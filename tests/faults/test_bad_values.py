"""Values under watched keys that MediaWiki never writes, among live writes: reported, parked, and nothing stuck.

Strings that are not a serialized seen time are published with their
value_error and parked by the replicator in the dead-letter topic (reason
bad_value). Values the capture never publishes (another Redis type, or a
string over [redis] max_value_bytes) are counted and logged by the capture.
Verify reports all of them as bad_value_in_redis, and the live writes around
them still reach Kask.
"""

from __future__ import annotations

import time

import pytest

from fault_harness import LOAD_S, Load, echo_keys, wait_for
from replicator import dead_letters

pytestmark = pytest.mark.stack

TTL_S = 31_536_000

# Strings the capture publishes with a value_error, keyed by the error that verify and the replicator report.
BAD_STRINGS = {
    "not_php_serialized": b"20190523123456",
    "wrong_length_prefix": b's:15:"20190523123456";',
    "not_utf8": b's:14:"2019\xff\xfe23123456";',
    "empty": b"",
    "not_a_timestamp": b's:14:"20191323123456";',
}
TRUNCATED = b's:14:"2019052312'


def test_bad_values_parked_and_reported(build_pipeline, unique_wiki):
    pipeline = build_pipeline()
    keys = echo_keys(unique_wiki)
    client = pipeline.redis_client
    capture, replicator = pipeline.start_watched(keys)

    expected: dict[str, str] = {}

    def bad_key() -> str:
        return f"{unique_wiki}:echo:seen:alert:time:{900_000 + len(expected)}"

    with Load(client, keys):
        time.sleep(LOAD_S)
        for reason, value in BAD_STRINGS.items():
            key = bad_key()
            client.setex(key, TTL_S, value)
            expected[key] = reason
        truncated_key = bad_key()
        client.setex(truncated_key, TTL_S, TRUNCATED)
        expected[truncated_key] = "not_php_serialized"
        large_key = bad_key()
        client.setex(large_key, TTL_S, b"x" * 1_048_576)
        expected[large_key] = "too_large"
        # HSET and RPUSH publish nothing the capture subscribes to; the EXPIRE after them does.
        hash_key = bad_key()
        client.hset(hash_key, mapping={"seen": "20190523123456"})
        client.expire(hash_key, TTL_S)
        expected[hash_key] = "not_a_string"
        list_key = bad_key()
        client.rpush(list_key, b's:14:"20190523123456";')
        client.expire(list_key, TTL_S)
        expected[list_key] = "not_a_string"
        time.sleep(LOAD_S)

    # The capture counts the values it never publishes, by reason, and logs the key.
    wait_for(lambda: capture.metric("echoseen_capture_bad_values_total") >= 3, 30, "the capture to count 3 bad values")
    assert capture.metric("echoseen_capture_bad_values_total", 'reason="too_large"') == 1
    assert capture.metric("echoseen_capture_bad_values_total", 'reason="not_a_string"') == 2
    assert "not publishing key" in capture.log()

    # Verify reports each bad value with its reason; the live writes around them all reached Kask.
    document = pipeline.assert_nothing_lost()
    reported = {sample["key"]: sample["detail"] for sample in document["samples"]["bad_value_in_redis"]}
    assert reported == expected
    assert document["categories"]["bad_value_in_redis"] == len(expected)

    # The published ones are parked with the reason and the value error; nothing else is.
    published = {key: reason for key, reason in expected.items() if reason not in ("too_large", "not_a_string")}
    by_key = pipeline.dead_letters(len(published))
    assert set(by_key) == set(published)
    for key, reason in published.items():
        assert by_key[key][dead_letters.HEADER_REASON] == "bad_value"
        assert reason in by_key[key][dead_letters.HEADER_DETAIL]
        assert key in by_key[key][dead_letters.HEADER_DETAIL]

    # Nothing is stuck: every partition is committed to its end and the replicator stays ready.
    pipeline.wait_caught_up()
    assert replicator.probe("/readyz")[0] == 200
    assert replicator.metric("echoseen_replicator_stopped_partitions") == 0
    assert replicator.stop() == 0
    assert capture.stop() == 0
