"""Watched keys whose names need care in Kask, among live writes: encoded and stored exactly, or parked.

A Redis key is any byte string. Kask takes the key as a percent-decoded URL
path segment and Cassandra stores it as text, so `%`, spaces, non-ASCII and
URL delimiters must round-trip through percent-encoding. Some keys cannot be
stored under their name at all: a key that is not UTF-8, one that contains
`/` (MediaWiki never builds one, but a look-alike can match the watched
patterns), and one longer than [kask] max_key_bytes. The replicator parks
those with the reason, and verify reports them as unaddressable.
"""

from __future__ import annotations

import time

import pytest

from devstack.cassandra import cql_session
from echoseen import echo_value
from echoseen.events import key_text
from echoseen.kask_body import BodyCodec
from fault_harness import LOAD_S, Load, echo_keys
from helpers import now_value
from replicator import dead_letters

pytestmark = pytest.mark.stack

TTL_S = 31_536_000


def test_keys_round_trip_or_parked(build_pipeline, cassandra_server, unique_wiki):
    pipeline = build_pipeline()
    keys = echo_keys(unique_wiki)
    client = pipeline.redis_client
    capture = pipeline.capture()
    replicator = pipeline.replicator()
    encodable = [
        f"{unique_wiki}%3Apercent:echo:seen:alert:time:1",
        f"{unique_wiki} space:echo:seen:alert:time:2",
        f"{unique_wiki}é日本:echo:seen:message:time:3",
        f"{unique_wiki}+&=?#~!$'()*,;@[]:echo:seen:alert:time:4",
        # Looks like an encoded '/', but is the text '%2F'.
        f"{unique_wiki}%2Fslash:echo:seen:alert:time:5",
    ]
    unaddressable = {
        b"\xff" + unique_wiki.encode() + b":echo:seen:alert:time:6": "not valid UTF-8",
        f"{unique_wiki}{'x' * 2000}:echo:seen:alert:time:7".encode(): "bytes long, over the limit",
        f"{unique_wiki}/slash:echo:seen:alert:time:8".encode(): "contains '/'",
    }

    with Load(client, keys):
        time.sleep(LOAD_S)
        for key in [*encodable, *unaddressable]:
            client.setex(key, TTL_S, now_value())
        time.sleep(LOAD_S)

    document = pipeline.assert_nothing_lost()
    reported = {sample["key"]: sample["detail"] for sample in document["samples"]["unaddressable"]}
    assert set(reported) == {key_text(key) for key in unaddressable}
    for key, reason in unaddressable.items():
        assert reason in reported[key_text(key)]

    # Cassandra stores each key under exactly its Redis name, with the body MediaWiki reads back.
    codec = BodyCodec()
    with cql_session(cassandra_server, keyspace="kask") as session:
        for key in encodable:
            row = session.execute("SELECT value FROM values WHERE key = %s", (key,)).one()
            assert row is not None, f"{key!r} is not in Cassandra under its own name"
            assert codec.decode(row.value).seen_time == echo_value.decode(client.get(key)).seen_time

    parked = pipeline.dead_letters(len(unaddressable))
    assert set(parked) == {key_text(key) for key in unaddressable}
    for key, reason in unaddressable.items():
        headers = parked[key_text(key)]
        assert headers[dead_letters.HEADER_REASON] == "unaddressable_key"
        assert reason in headers[dead_letters.HEADER_DETAIL]

    pipeline.wait_caught_up()
    assert replicator.stop() == 0
    assert capture.stop() == 0
