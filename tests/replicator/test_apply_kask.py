"""The apply step against the real Kask and Cassandra: bodies, key encoding, and the monotonic rules."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from replicator_harness import delete, echo_key, kask_bodies, kask_post, seen_time, upsert

from devstack.cassandra import cql_session
from echoseen import echo_value
from echoseen.kask_body import BodyCodec, BodyFormat
from echoseen.ratelimit import TokenBucket
from replicator.apply import Applier, KaskRetryableError, Outcome
from replicator.kask_client import KaskClient

pytestmark = pytest.mark.stack

SEEN = "20190523123456"
VECTORS = [
    (BodyFormat.JSON, None, b'JSON.."20190523123456"'),
    (BodyFormat.PHP, None, b'PHP..s:14:"20190523123456";'),
    (BodyFormat.LEGACY, None, b's:14:"20190523123456";'),
    (BodyFormat.PHP, b"secret", b'PHP.I9uwUnFMeuV8QluYRc4wVGMG4kP1VZ4zzGZU0Toi+6w=.s:14:"20190523123456";'),
    (BodyFormat.JSON, b"secret", b'JSON.tO3dTti1VMtzpgfOcRJ6KszObI8GBPD0MQUCZLhrzzM=."20190523123456"'),
]


def apply_all(config, event_list, codec=BodyCodec(), dry_run=False, rate_per_s=0.0) -> list[Outcome]:
    async def run() -> list[Outcome]:
        async with KaskClient(config.kask, max_in_flight=8) as client:
            applier = Applier(client, codec, config.kask.max_key_bytes, TokenBucket(rate_per_s), dry_run)
            return [await applier.apply(event) for event in event_list]

    return asyncio.run(run())


@pytest.fixture
def config(make_config, kask_server):
    return make_config(kask_server=kask_server)


@pytest.mark.parametrize("body_format, hmac_key, body", VECTORS)
def test_written_body_matches_vector(config, unique_wiki, body_format, hmac_key, body):
    key = echo_key(unique_wiki, 1)
    codec = BodyCodec(body_format, hmac_key)
    assert apply_all(config, [upsert(key, SEEN)], codec) == [Outcome.WRITTEN]
    assert kask_bodies(config, [key]) == {key: body}
    # Applying the same event again reads the body back as the same seen time.
    assert apply_all(config, [upsert(key, SEEN)], codec) == [Outcome.ALREADY_APPLIED]


def test_key_stored_decoded(config, cassandra_server, unique_wiki):
    keys = [f"{unique_wiki}:echo:seen:alert:time:1".encode(),
            f"{unique_wiki} spaced%25:echo:seen:message:time:2".encode(),
            f"{unique_wiki}é:echo:seen:alert:time:3".encode()]
    assert apply_all(config, [upsert(key, SEEN) for key in keys]) == [Outcome.WRITTEN] * 3
    with cql_session(cassandra_server, keyspace="kask") as session:
        for key in keys:
            row = session.execute("SELECT value FROM values WHERE key = %s", (key.decode(),)).one()
            assert row is not None, f"Cassandra has no row for {key!r}"
            assert row.value == b'JSON.."20190523123456"'


def test_newer_event_overwrites(config, unique_wiki):
    key = echo_key(unique_wiki, 1)
    outcomes = apply_all(config, [upsert(key, seen_time(10)), upsert(key, seen_time(20))])
    assert outcomes == [Outcome.WRITTEN, Outcome.WRITTEN]
    assert kask_bodies(config, [key])[key] == BodyCodec().encode(seen_time(20))


def test_older_event_is_stale(config, unique_wiki):
    key = echo_key(unique_wiki, 1)
    outcomes = apply_all(config, [upsert(key, seen_time(20)), upsert(key, seen_time(10))])
    assert outcomes == [Outcome.WRITTEN, Outcome.STALE]
    assert kask_bodies(config, [key])[key] == BodyCodec().encode(seen_time(20))


def test_mediawiki_newer_write_kept(config, unique_wiki):
    key = echo_key(unique_wiki, 1)
    kask_post(config, key, BodyCodec().encode(seen_time(30)))
    assert apply_all(config, [upsert(key, seen_time(20))]) == [Outcome.STALE]
    assert kask_bodies(config, [key])[key] == BodyCodec().encode(seen_time(30))


@pytest.mark.parametrize("stored", [
    b'PHP..s:14:"20240601120000";',  # another RESTBagOStuff format
    b"JSON..not json",
    b'JSON.."19700101000001"',  # the placeholder
    b'JSON..12345',
])
def test_unreadable_body_overwritten(config, unique_wiki, stored):
    key = echo_key(unique_wiki, 1)
    kask_post(config, key, stored)
    assert apply_all(config, [upsert(key, seen_time(5))]) == [Outcome.WRITTEN]
    assert kask_bodies(config, [key])[key] == BodyCodec().encode(seen_time(5))


def test_bad_mac_overwritten(config, unique_wiki):
    key = echo_key(unique_wiki, 1)
    kask_post(config, key, BodyCodec(BodyFormat.JSON, b"other").encode("20990101000000"))
    codec = BodyCodec(BodyFormat.JSON, b"secret")
    assert apply_all(config, [upsert(key, seen_time(5))], codec) == [Outcome.WRITTEN]
    assert kask_bodies(config, [key])[key] == codec.encode(seen_time(5))


def test_placeholder_never_written(config, unique_wiki):
    key = echo_key(unique_wiki, 1)
    assert apply_all(config, [upsert(key, echo_value.PLACEHOLDER)]) == [Outcome.SKIPPED_PLACEHOLDER]
    assert kask_bodies(config, [key]) == {key: None}


def test_deletes_follow_version(config, unique_wiki):
    stays, goes, expired = echo_key(unique_wiki, 1), echo_key(unique_wiki, 2), echo_key(unique_wiki, 3)
    version_before = (echo_value.epoch_s_from_ts_mw(seen_time(20)) - 5) * 1_000_000
    version_after = (echo_value.epoch_s_from_ts_mw(seen_time(20)) + 5) * 1_000_000
    outcomes = apply_all(config, [
        upsert(stays, seen_time(20)), delete(stays, "del", version_before),
        upsert(goes, seen_time(20)), delete(goes, "unlink", version_after),
        upsert(expired, seen_time(20)), delete(expired, "expired", version_after),
        delete(goes, "del", version_after),
    ])
    assert outcomes == [Outcome.WRITTEN, Outcome.STALE, Outcome.WRITTEN, Outcome.DELETED, Outcome.WRITTEN,
                        Outcome.SKIPPED_EXPIRY, Outcome.ALREADY_APPLIED]
    bodies = kask_bodies(config, [stays, goes, expired])
    assert bodies[stays] == BodyCodec().encode(seen_time(20))
    assert bodies[goes] is None
    assert bodies[expired] == BodyCodec().encode(seen_time(20))


def test_dry_run_writes_nothing(config, unique_wiki):
    key, gone = echo_key(unique_wiki, 1), echo_key(unique_wiki, 2)
    kask_post(config, gone, BodyCodec().encode(seen_time(1)))
    outcomes = apply_all(config, [upsert(key, seen_time(5)), delete(gone, "del", int(2e15))], dry_run=True)
    assert outcomes == [Outcome.WOULD_WRITE, Outcome.WOULD_DELETE]
    assert kask_bodies(config, [key, gone]) == {key: None, gone: BodyCodec().encode(seen_time(1))}


def test_rate_limit_spaces_requests(config, unique_wiki):
    # 8 events need 8 GETs and 8 POSTs: at 20 requests per second with a 20-request burst that is
    # immediate, so the bucket starts nearly empty here to make the limit visible.
    event_list = [upsert(echo_key(unique_wiki, index), SEEN) for index in range(8)]
    bucket = TokenBucket(20.0)
    bucket.acquire(20.0)

    async def run() -> float:
        async with KaskClient(replace(config.kask), max_in_flight=8) as client:
            applier = Applier(client, BodyCodec(), config.kask.max_key_bytes, bucket)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.gather(*(applier.apply(event) for event in event_list))
            return loop.time() - started

    elapsed_s = asyncio.run(run())
    # 16 requests at 20 per second cannot finish in less than about 0.75 s.
    assert elapsed_s >= 0.7


def test_https_with_ca_bundle(config, cassandra_server, tmp_path, unique_wiki):
    from devstack.kask import KaskTLS, start_kask
    from devstack.tls import make_tls_files

    files = make_tls_files(tmp_path / "tls")
    server = start_kask(tmp_path / "kask-tls", cassandra_server, tls=KaskTLS(files.cert_path, files.key_path))
    try:
        assert server.url.startswith("https://")
        trusted = replace(config, kask=replace(config.kask, url=server.url, ca_file=str(files.ca_cert_path)))
        key = echo_key(unique_wiki, 1)
        assert apply_all(trusted, [upsert(key, SEEN)]) == [Outcome.WRITTEN]
        assert kask_bodies(trusted, [key]) == {key: b'JSON.."20190523123456"'}

        # Without the CA bundle the private CA is not trusted: the request fails before any HTTP response.
        untrusted = replace(trusted, kask=replace(trusted.kask, ca_file=""))
        with pytest.raises(KaskRetryableError) as raised:
            apply_all(untrusted, [upsert(key, seen_time(9))])
        assert "certificate" in str(raised.value).lower()
    finally:
        server.stop()


def test_dropped_connection_retryable(config, fault_proxy, kask_server, unique_wiki):
    proxied = replace(config, kask=replace(config.kask, url=fault_proxy.url(kask_server.settings.base_uri)))
    fault_proxy.set_faults(drop_connections=True)
    with pytest.raises(KaskRetryableError) as raised:
        apply_all(proxied, [upsert(echo_key(unique_wiki, 1), SEEN)])
    assert raised.value.kind == "connection_error"
    assert raised.value.status is None
    assert fault_proxy.stats["dropped"] >= 1


def test_server_error_retryable(config, fault_proxy, kask_server, unique_wiki):
    proxied = replace(config, kask=replace(config.kask, url=fault_proxy.url(kask_server.settings.base_uri)))
    fault_proxy.set_faults(error_rate=1.0, error_status=503)
    with pytest.raises(KaskRetryableError) as raised:
        apply_all(proxied, [upsert(echo_key(unique_wiki, 1), SEEN)])
    assert raised.value.kind == "http_5xx"
    assert raised.value.status == 503


def test_client_error_rejected(config, fault_proxy, kask_server, unique_wiki):
    from replicator.apply import REASON_KASK_REJECTED, RecordRejected

    proxied = replace(config, kask=replace(config.kask, url=fault_proxy.url(kask_server.settings.base_uri)))
    fault_proxy.set_faults(error_rate=1.0, error_status=403)
    with pytest.raises(RecordRejected) as raised:
        apply_all(proxied, [upsert(echo_key(unique_wiki, 1), SEEN)])
    assert raised.value.reason == REASON_KASK_REJECTED
    assert "403" in raised.value.detail
