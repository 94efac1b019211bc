"""Kask's HTTP contract, tested over HTTP against the Kask that devstack.kask.start_kask starts.

The checks follow Kask's API as MediaWiki and the replicator use it: status
codes, error bodies, key encoding, byte-exact values, the service-wide TTL,
/healthz and /metrics. Nothing here depends on how the server is built, so
the same suite checks the kask-standin build and a real Kask binary
(ECHOSEEN_KASK_BINARY). One test reads Kask's Cassandra table, whose layout
(key text PRIMARY KEY, value blob, one TTL per write) is part of Kask's contract.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
from kask_http import SHORT_TTL_S, KaskClient, Reply
from prometheus_client.parser import text_string_to_metric_families

from devstack.cassandra import CassandraServer, cql_session
from devstack.kask import ECHO_TTL_S, KaskServer

pytestmark = pytest.mark.stack

OCTET_STREAM = "application/octet-stream"
ECHO_BODY = b'JSON.."20190523123456"'


def unique_key(prefix: str = "contract") -> str:
    return f"{prefix}:{uuid.uuid4().hex}"


def assert_problem(reply: Reply, status: int, type_suffix: str, instance: str) -> None:
    """Check an RFC 7807 error reply: status, JSON content type and the four string fields."""
    assert reply.status == status, reply.body
    assert reply.content_type.split(";")[0].strip() == "application/json"
    problem = json.loads(reply.body)
    assert isinstance(problem, dict)
    for field_name in ("type", "title", "detail", "instance"):
        assert isinstance(problem.get(field_name), str), f"{field_name} missing in {problem}"
    assert problem["type"].endswith(type_suffix), problem["type"]
    assert problem["title"]
    assert problem["instance"] == instance


# Writing and reading.

def test_post_returns_201_empty(client: KaskClient) -> None:
    reply = client.post(unique_key(), ECHO_BODY)

    assert reply.status == 201
    assert reply.body == b""


def test_get_returns_stored_bytes(client: KaskClient) -> None:
    key = unique_key()
    client.post(key, ECHO_BODY)

    reply = client.get(key)

    assert reply.status == 200
    assert reply.content_type == OCTET_STREAM
    assert reply.body == ECHO_BODY


@pytest.mark.parametrize("value", [
    bytes(range(256)),
    b"\xff\xfe\x00\x80 not UTF-8 \xc3\x28",
    b"\x00",
    b"PHP..s:14:\"20190523123456\";",
    os.urandom(1024 * 1024),
], ids=["all-bytes", "invalid-utf8", "nul", "php", "1MiB-random"])
def test_value_bytes_roundtrip(client: KaskClient, value: bytes) -> None:
    key = unique_key()

    assert client.post(key, value).status == 201
    reply = client.get(key)

    assert reply.status == 200
    assert reply.body == value


def test_post_overwrites(client: KaskClient) -> None:
    key = unique_key()
    client.post(key, b"first, and longer than the second")
    client.post(key, b"second")

    reply = client.get(key)

    assert reply.status == 200
    assert reply.body == b"second"


def test_post_last_write_wins(client: KaskClient) -> None:
    key = unique_key()
    for index in range(20):
        assert client.post(key, f"write {index}".encode()).status == 201

    assert client.get(key).body == b"write 19"


# Keys.

@pytest.mark.parametrize("key", [
    "enwiki:echo:seen:alert:time:12345",
    "global:echo:seen:message:time:987654321",
    "with space",
    "100% sure",
    "literal%3A not a colon",
    "naïve-ключ-鍵",
    "emoji-\U0001F600",
    "plus+semicolon;comma,equals=",
    "quote'\"backslash\\",
    "tilde~dots.dashes-under_",
], ids=["echo-local", "echo-global", "space", "percent", "encoded-colon", "non-ascii", "emoji",
        "sub-delims", "quotes", "unreserved"])
def test_key_roundtrip(client: KaskClient, key: str) -> None:
    unique = f"{key} {uuid.uuid4().hex}"
    value = f"value of {unique}".encode()

    assert client.post(unique, value).status == 201
    reply = client.get(unique)

    assert reply.status == 200
    assert reply.body == value


def test_key_percent_decoded(client: KaskClient) -> None:
    # An encoded and an unencoded spelling of one key name the same value.
    key = unique_key("enwiki:echo:seen:alert:time")
    client.post(key, b"stored with %3A")

    raw_path = client.server.settings.base_uri + key
    reply = client.request("GET", raw_path)

    assert reply.status == 200
    assert reply.body == b"stored with %3A"


def test_key_encodings_distinct(client: KaskClient) -> None:
    # "a:b" and the literal text "a%3Ab" are different keys.
    suffix = uuid.uuid4().hex
    decoded_key = f"a:b{suffix}"
    literal_key = f"a%3Ab{suffix}"
    client.post(decoded_key, b"colon")
    client.post(literal_key, b"percent")

    assert client.get(decoded_key).body == b"colon"
    assert client.get(literal_key).body == b"percent"


def test_key_case_sensitive(client: KaskClient) -> None:
    suffix = uuid.uuid4().hex
    client.post(f"Key{suffix}", b"upper")

    assert client.get(f"key{suffix}").status == 404


# Missing keys and unaddressable keys.

def test_missing_key_404(client: KaskClient) -> None:
    key = unique_key()

    reply = client.get(key)

    assert_problem(reply, 404, "not_found", client.decoded_path(key))


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_encoded_slash_404(client: KaskClient, method: str) -> None:
    suffix = uuid.uuid4().hex
    path = client.server.settings.base_uri + f"a%2F{suffix}"

    reply = client.request(method, path, body=b"value" if method == "POST" else None)

    assert reply.status == 404
    assert client.get(f"a/{suffix}").status == 404


def test_slash_in_path_404(client: KaskClient) -> None:
    suffix = uuid.uuid4().hex
    path = client.server.settings.base_uri + f"a/{suffix}"

    reply = client.request("POST", path, body=b"value")

    assert reply.status == 404
    assert client.request("GET", path).status == 404


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_empty_key_404(client: KaskClient, method: str) -> None:
    path = client.server.settings.base_uri

    reply = client.request(method, path, body=b"value" if method == "POST" else None)

    assert_problem(reply, 404, "not_found", path)


# Rejected requests.

def test_put_400(client: KaskClient) -> None:
    key = unique_key()

    reply = client.request("PUT", client.key_path(key), body=b"value")

    assert_problem(reply, 400, "bad_request", client.decoded_path(key))
    assert client.get(key).status == 404


def test_put_leaves_value(client: KaskClient) -> None:
    key = unique_key()
    client.post(key, b"kept")

    assert client.request("PUT", client.key_path(key), body=b"replaced").status == 400
    assert client.get(key).body == b"kept"


def test_empty_body_400(client: KaskClient) -> None:
    key = unique_key()

    reply = client.post(key, b"")

    assert_problem(reply, 400, "bad_request", client.decoded_path(key))
    assert client.get(key).status == 404


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize("query", ["?a=b", "?flag", "?ttl=60"])
def test_query_string_400(client: KaskClient, method: str, query: str) -> None:
    key = unique_key()
    client.post(key, b"kept")

    reply = client.request(method, client.key_path(key) + query, body=b"new" if method == "POST" else None)

    assert reply.status == 400
    assert client.get(key).body == b"kept"


@pytest.mark.parametrize("method", ["PATCH", "OPTIONS", "HEAD"])
def test_other_methods_400(client: KaskClient, method: str) -> None:
    key = unique_key()
    client.post(key, b"kept")

    reply = client.request(method, client.key_path(key))

    assert reply.status == 400
    assert client.get(key).body == b"kept"


def test_error_body_shape(client: KaskClient) -> None:
    key = unique_key()
    instance = client.decoded_path(key)

    assert_problem(client.get(key), 404, "not_found", instance)
    assert_problem(client.request("PUT", client.key_path(key), body=b"v"), 400, "bad_request", instance)
    assert_problem(client.request("GET", client.key_path(key) + "?x=1"), 400, "bad_request", instance)


# Deletes.

def test_delete_present_204(client: KaskClient) -> None:
    key = unique_key()
    client.post(key, ECHO_BODY)

    reply = client.delete(key)

    assert reply.status == 204
    assert reply.body == b""
    assert client.get(key).status == 404


def test_delete_absent_204(client: KaskClient) -> None:
    reply = client.delete(unique_key())

    assert reply.status == 204
    assert reply.body == b""


def test_post_after_delete(client: KaskClient) -> None:
    key = unique_key()
    client.post(key, b"before")
    client.delete(key)

    assert client.post(key, b"after").status == 201
    assert client.get(key).body == b"after"


# The service-wide TTL.

def wait_for_status(client: KaskClient, key: str, status: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    reply = client.get(key)
    while reply.status != status and time.monotonic() < deadline:
        time.sleep(0.25)
        reply = client.get(key)
    return reply.status


def test_value_expires(short_ttl_client: KaskClient) -> None:
    key = unique_key()

    assert short_ttl_client.post(key, ECHO_BODY).status == 201
    assert short_ttl_client.get(key).status == 200

    # Cassandra counts TTLs in whole seconds, so the value goes within TTL + 1 s;
    # the extra margin only absorbs a slow machine.
    assert wait_for_status(short_ttl_client, key, 404, timeout_s=SHORT_TTL_S + 10) == 404


def test_expired_key_writable(short_ttl_client: KaskClient) -> None:
    key = unique_key()
    short_ttl_client.post(key, b"first")
    assert wait_for_status(short_ttl_client, key, 404, timeout_s=SHORT_TTL_S + 10) == 404

    assert short_ttl_client.post(key, b"second").status == 201
    assert short_ttl_client.get(key).body == b"second"


def test_ttl_is_per_service(client: KaskClient, short_ttl_client: KaskClient) -> None:
    # Both services share one table; each write carries the TTL of the service that made it.
    long_key = unique_key()
    short_key = unique_key()
    client.post(long_key, b"long")
    short_ttl_client.post(short_key, b"short")

    assert wait_for_status(client, short_key, 404, timeout_s=SHORT_TTL_S + 10) == 404
    assert client.get(long_key).body == b"long"
    assert short_ttl_client.get(long_key).body == b"long"


def test_storage_row_ttl(client: KaskClient, short_ttl_client: KaskClient, kask: KaskServer,
                         contract_cassandra: CassandraServer) -> None:
    long_key = unique_key("enwiki:echo:seen:alert:time")
    short_key = unique_key("enwiki:echo:seen:message:time")
    client.post(long_key, ECHO_BODY)
    short_ttl_client.post(short_key, ECHO_BODY)

    settings = kask.settings
    with cql_session(contract_cassandra, settings.keyspace) as session:
        statement = f'SELECT key, value, TTL(value) AS ttl FROM "{settings.table}" WHERE key = %s'
        long_row = session.execute(statement, (long_key,)).one()
        short_row = session.execute(statement, (short_key,)).one()

    # Keys are stored percent-decoded, values byte for byte.
    assert long_row is not None
    assert long_row.key == long_key
    assert long_row.value == ECHO_BODY
    assert long_row.ttl is not None
    assert ECHO_TTL_S - 60 <= long_row.ttl <= ECHO_TTL_S
    assert short_row is not None
    assert short_row.ttl is not None
    assert 0 < short_row.ttl <= SHORT_TTL_S


# Health and metrics.

def test_healthz_200(client: KaskClient) -> None:
    reply = client.request("GET", "/healthz")

    assert reply.status == 200


def metric_samples(client: KaskClient, name: str) -> dict[tuple[str, str], float]:
    """Return {(code, method): value} of one metric sample name from /metrics."""
    reply = client.request("GET", "/metrics")
    assert reply.status == 200
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            if sample.name == name:
                values[(sample.labels.get("code"), sample.labels.get("method"))] = sample.value
    return values


def test_metrics_count_requests(client: KaskClient) -> None:
    before = metric_samples(client, "http_requests_total")
    key = unique_key()
    for _ in range(3):
        client.get(key)
    client.post(key, b"value")
    client.request("PUT", client.key_path(key), body=b"value")

    after = metric_samples(client, "http_requests_total")

    assert after[("404", "GET")] - before.get(("404", "GET"), 0.0) >= 3
    assert after[("201", "POST")] - before.get(("201", "POST"), 0.0) >= 1
    assert after[("400", "PUT")] - before.get(("400", "PUT"), 0.0) >= 1


def test_metrics_latency_histogram(client: KaskClient) -> None:
    key = unique_key()
    client.post(key, b"value")
    client.get(key)

    counts = metric_samples(client, "http_request_duration_seconds_count")
    sums = metric_samples(client, "http_request_duration_seconds_sum")

    assert counts[("200", "GET")] >= 1
    assert counts[("201", "POST")] >= 1
    assert sums[("200", "GET")] > 0
