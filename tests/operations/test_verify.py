"""`echoseen verify` on a real Redis and Kask: categories, scope, and the repair by capture and replicator."""

from __future__ import annotations

from dataclasses import replace

import pytest

from devstack.process import free_port
from echoseen import echo_value
from echoseen.errors import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE
from echoseen.kask_body import BodyCodec
from helpers import now_value
from ops_helpers import Ops, wait_until

pytestmark = pytest.mark.stack

JSON_CODEC = BodyCodec()


def kask_body(seen_time: str) -> bytes:
    return JSON_CODEC.encode(seen_time)


def test_verify_categories_and_scope(stack_ops, redis_client, kask_http, unique_wiki):
    key = f"{unique_wiki}:echo:seen:alert:time:{{}}".format
    other_wiki_key = f"x{unique_wiki}:echo:seen:alert:time:1"
    for index in range(10):
        redis_client.set(key(index), echo_value.encode("20240105000000"))
        kask_http.post(key(index), kask_body("20240105000000"))
    redis_client.set(key(10), echo_value.encode("20240105000000"))
    kask_http.post(key(10), kask_body("20240301000000"))
    redis_client.set(key(11), echo_value.encode(echo_value.PLACEHOLDER))
    redis_client.set(key(12), b"not a seen time")
    redis_client.set(key(13), echo_value.encode("20200101000000"))
    redis_client.set(other_wiki_key, echo_value.encode("20240105000000"))
    redis_client.set(f"{unique_wiki}:echo:other:1", b"x")

    result = stack_ops.cli("verify", "--wiki", unique_wiki, "--cutoff", "2021-01-01", "--no-store", "--json")

    assert result.status == EXIT_OK, result.stdout + result.stderr
    document = result.json()
    assert document["categories"] == {"equal": 10, "kask_newer": 1, "placeholder_in_redis_missing_in_kask": 1,
                                      "bad_value_in_redis": 1, "older_than_cutoff": 1}
    assert document["compared"] == 14
    assert document["passed"] is True
    assert document["stored"] is False
    assert document["samples"]["older_than_cutoff"][0] == {"key": key(13), "redis": "20200101000000",
                                                          "kask": None, "detail": "was missing_in_kask"}
    assert document["samples"]["bad_value_in_redis"][0]["detail"] == "not_php_serialized"

    strict = stack_ops.cli("verify", "--wiki", unique_wiki, "--cutoff", "2021-01-01", "--bad-values-fail",
                           "--no-store")
    assert strict.status == EXIT_FAILED
    assert "FAILED: 1 bad keys remain (bad_value_in_redis=1)" in strict.stdout

    without_cutoff = stack_ops.cli("verify", "--wiki", unique_wiki, "--no-store", "--json")
    assert without_cutoff.status == EXIT_FAILED
    assert without_cutoff.json()["categories"]["missing_in_kask"] == 1

    everything = stack_ops.cli("verify", "--no-store", "--json").json()
    assert everything["compared"] == 15
    assert everything["categories"]["missing_in_kask"] == 2


def test_verify_sample_fraction(stack_ops, redis_client, kask_http, unique_wiki):
    for index in range(60):
        redis_client.set(f"{unique_wiki}:echo:seen:message:time:{index}", echo_value.encode("20240105000000"))

    first = stack_ops.cli("verify", "--sample", "0.5", "--seed", "7", "--no-store", "--json").json()
    again = stack_ops.cli("verify", "--sample", "0.5", "--seed", "7", "--no-store", "--json").json()

    assert first["scanned"] == 60
    assert 0 < first["compared"] < 60
    assert again["compared"] == first["compared"]
    assert first["categories"] == {"missing_in_kask": first["compared"]}
    assert "sample 0.5" in first["scope"]


def test_verify_uses_hmac_key(stack_ops, redis_client, kask_http, unique_wiki):
    key = f"{unique_wiki}:echo:seen:alert:time:1"
    redis_client.set(key, echo_value.encode("20240105000000"))
    kask_http.post(key, kask_body("20240105000000"))

    plain = stack_ops.cli("verify", "--wiki", unique_wiki, "--no-store", "--json")
    keyed = stack_ops.cli("verify", "--wiki", unique_wiki, "--no-store", "--json",
                          env={"ECHOSEEN_KASK_HMAC_KEY": "secret"})

    assert plain.status == EXIT_OK, plain.stdout
    assert keyed.status == EXIT_FAILED
    assert keyed.json()["categories"] == {"undecodable_in_kask": 1}
    assert keyed.json()["samples"]["undecodable_in_kask"][0]["detail"] == "bad_mac"


def test_verify_unreachable_kask(stack_ops, redis_client, tmp_path):
    closed_port = free_port()
    config = stack_ops.config
    ops = Ops(replace(config, kask=replace(config.kask, url=f"http://127.0.0.1:{closed_port}/echoseen/v1/")),
              tmp_path)

    result = ops.cli("verify", "--no-store", "--timeout", "2", timeout_s=30)

    assert result.status == EXIT_UNAVAILABLE
    assert f"cannot reach Kask at http://127.0.0.1:{closed_port}/echoseen/v1/ ([kask] url)" in result.stderr
    assert result.duration_s < 10


def test_verify_finds_damage_until_repaired(stack_ops, redis_client, kask_http, unique_wiki):
    ops = stack_ops
    keys = [f"{unique_wiki}:echo:seen:alert:time:{index}" for index in range(30)]
    ops.start_capture()
    ops.start_replicator()
    values = {}
    for key in keys:
        values[key] = now_value()
        redis_client.set(key, values[key], ex=31_536_000)
    wait_until(lambda: ops.cli("verify", "--wiki", unique_wiki, "--recheck-rounds", "0", "--no-store").status == 0,
               60, "the pipeline to copy every key")

    # Damage Kask behind the pipeline's back: a lost key, an older value, a body MediaWiki cannot read.
    kask_http.delete(keys[0])
    kask_http.post(keys[1], kask_body("20200101000000"))
    kask_http.post(keys[2], b"PHP..garbage")
    damaged = ops.cli("verify", "--wiki", unique_wiki, "--json")

    assert damaged.status == EXIT_FAILED, damaged.stdout
    document = damaged.json()
    assert document["categories"] == {"equal": 27, "missing_in_kask": 1, "kask_older": 1,
                                      "undecodable_in_kask": 1}
    assert document["bad"] == 3
    assert document["recheck_rounds"] == 1
    assert document["samples"]["missing_in_kask"][0]["key"] == keys[0]
    assert document["samples"]["kask_older"][0]["kask"] == "20200101000000"
    assert document["samples"]["undecodable_in_kask"][0]["detail"] == "other_format"
    assert document["stored"] is True
    status = ops.cli("status", "--json").json()
    assert status["verify"]["passed"] is False
    assert status["verify"]["bad"] == 3

    # Repair: MediaWiki writes the keys again; the capture publishes them and the replicator applies them.
    # Verify starts at once, so its recheck rounds are what lets the writes in flight settle.
    for key in keys[:3]:
        redis_client.set(key, values[key], ex=31_536_000)
    repaired = ops.cli("verify", "--wiki", unique_wiki, "--recheck-rounds", "20", "--recheck-delay", "1")

    assert repaired.status == EXIT_OK, repaired.stdout + repaired.stderr
    assert "PASSED: nothing bad remains" in repaired.stdout
    status = ops.cli("status", "--json").json()
    assert status["verify"]["passed"] is True
    assert status["verify"]["categories"] == {"equal": 30}
    assert status["verify"]["scope"] == f"wikis {unique_wiki}"
