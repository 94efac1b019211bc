"""Kask key encoding and the replicator's body codec built from the configuration."""

from __future__ import annotations

from dataclasses import replace

import pytest

from echoseen import config as config_module
from replicator.apply import codec_from_config
from replicator.kask_client import KaskClient, encode_key, unaddressable_reason

SEEN = "20190523123456"


@pytest.mark.parametrize("key, encoded", [
    (b"enwiki:echo:seen:alert:time:12345", "enwiki%3Aecho%3Aseen%3Aalert%3Atime%3A12345"),
    (b"a/b", "a%2Fb"),
    (b"user name", "user%20name"),
    (b"100%", "100%25"),
    ("dewiki:échø".encode(), "dewiki%3A%C3%A9ch%C3%B8"),
    (b"AZaz09-._~", "AZaz09-._~"),
    (b"q?x#y&z=1+2", "q%3Fx%23y%26z%3D1%2B2"),
])
def test_key_encoding(key, encoded):
    assert encode_key(key) == encoded


def test_url_keeps_encoding():
    config = replace(config_module.KaskConfig(), url="http://127.0.0.1:8081/echoseen/v1/")
    client = KaskClient(config)
    url = client.url_for(b"global:echo:seen:message:time:7 %/x")
    assert str(url) == "http://127.0.0.1:8081/echoseen/v1/global%3Aecho%3Aseen%3Amessage%3Atime%3A7%20%25%2Fx"


def test_base_url_gets_trailing_slash():
    config = replace(config_module.KaskConfig(), url="http://127.0.0.1:8081/echoseen/v1")
    assert str(KaskClient(config).url_for(b"k")) == "http://127.0.0.1:8081/echoseen/v1/k"


@pytest.mark.parametrize("key", [b"", b"a/b", b"/", b".", b"..", b"\xff", b"x" * 11])
def test_unaddressable_keys(key):
    assert unaddressable_reason(key, max_key_bytes=10) is not None


@pytest.mark.parametrize("key", [b"x" * 10, b"...", b"a.b", "é".encode(), b"a b", b"%2F"])
def test_addressable_keys(key):
    assert unaddressable_reason(key, max_key_bytes=10) is None


# The test vectors of RESTBagOStuff for the string 20190523123456, by (body_format, HMAC key).
VECTORS = [
    ("JSON", "", b'JSON.."20190523123456"'),
    ("PHP", "", b'PHP..s:14:"20190523123456";'),
    ("legacy", "", b's:14:"20190523123456";'),
    ("PHP", "secret", b'PHP.I9uwUnFMeuV8QluYRc4wVGMG4kP1VZ4zzGZU0Toi+6w=.s:14:"20190523123456";'),
    ("JSON", "secret", b'JSON.tO3dTti1VMtzpgfOcRJ6KszObI8GBPD0MQUCZLhrzzM=."20190523123456"'),
]


@pytest.mark.parametrize("body_format, hmac_key, body", VECTORS)
def test_codec_from_config_vectors(tmp_path, body_format, hmac_key, body):
    key_file = tmp_path / "hmac"
    key_file.write_text(hmac_key + "\n")
    base = config_module.load(None, environ={})
    config = replace(base, kask=replace(base.kask, body_format=body_format,
                                        hmac_key_file=str(key_file) if hmac_key else ""))
    codec = codec_from_config(config)
    assert codec.encode(SEEN) == body
    assert codec.decode(body).seen_time == SEEN
    assert "secret" not in repr(codec)
