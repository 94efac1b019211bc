"""The local stack's private CA (devstack.tls) and the SASL_SSL settings of devstack.kafka, without servers."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import replace

import pytest

from devstack.kafka import KafkaPorts, SaslSslSettings, _server_properties
from devstack.process import StackError
from devstack.tls import make_client_certificate, make_tls_files, write_pem_keystore


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("ca"))


def openssl_verify(ca_path, cert_path, purpose: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile", str(ca_path), str(cert_path)],
                          capture_output=True, text=True, check=False)


def test_client_certificate_signed_by_ca(tls_files):
    client = make_client_certificate(tls_files, "echoseen-test-client")

    as_client = openssl_verify(tls_files.ca_cert_path, client.cert_path, "sslclient")
    as_server = openssl_verify(tls_files.ca_cert_path, client.cert_path, "sslserver")

    assert as_client.returncode == 0, as_client.stdout + as_client.stderr
    assert as_server.returncode != 0, "a client certificate must not be usable as a server certificate"
    assert oct(client.key_path.stat().st_mode & 0o777) == "0o600"
    ssl.create_default_context().load_cert_chain(str(client.cert_path), str(client.key_path))


def test_client_certificate_needs_ca_key(tls_files, tmp_path):
    with pytest.raises(StackError, match="CA key"):
        make_client_certificate(replace(tls_files, ca_key_path=None), directory=tmp_path)


def test_ca_key_private(tls_files):
    assert oct(tls_files.ca_key_path.stat().st_mode & 0o777) == "0o600"
    assert oct(tls_files.key_path.stat().st_mode & 0o777) == "0o600"


def test_pem_keystore_layout(tls_files, tmp_path):
    keystore = write_pem_keystore(tls_files, tmp_path / "keystore.pem")
    text = keystore.read_text()

    assert text.startswith("-----BEGIN PRIVATE KEY-----")
    assert text.count("-----BEGIN CERTIFICATE-----") == 2
    assert oct(keystore.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("users", [{"ok": "has,comma"}, {"ok": "has space"}, {"a=b": "fine"}, {"ok": ""}, {}])
def test_sasl_settings_reject_syntax(users):
    with pytest.raises(ValueError) as raised:
        SaslSslSettings(users=users)

    for password in users.values():
        if password:
            assert password not in str(raised.value)


def test_sasl_settings_reject_mechanism():
    with pytest.raises(ValueError, match="SCRAM-SHA-512"):
        SaslSslSettings(users={"a": "b"}, mechanism="PLAIN")


def test_sasl_listener_properties(tls_files, tmp_path):
    settings = SaslSslSettings(users={"echoseen": "pw"}, tls=tls_files)
    ports = KafkaPorts(broker=9092, controller=9093, sasl_ssl=9094)

    properties = _server_properties(tmp_path, ports, None, settings, tmp_path / "keystore.pem")

    assert properties["listeners"] == \
        "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093,SASL_SSL://127.0.0.1:9094"
    assert properties["inter.broker.listener.name"] == "PLAINTEXT"
    assert properties["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert properties["listener.name.sasl_ssl.ssl.keystore.type"] == "PEM"
    assert "pw" not in properties.values()
