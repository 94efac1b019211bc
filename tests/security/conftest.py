"""Fixtures of the security suite: a private CA, Kafka with a SASL_SSL listener, Kask over HTTPS, secret values.

Secret values are random per session and long, so finding one in any output
can only mean that the product printed it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from security_helpers import SASL_USER, Scenario


def distinctive_secret(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(12)}"


@pytest.fixture(scope="session")
def secret_values() -> dict[str, str]:
    """One distinctive value per kind of secret; the keys name them in failure messages."""
    return {
        "Redis password": distinctive_secret("redispw"),
        "SASL password": distinctive_secret("saslpw"),
        "HMAC key": distinctive_secret("hmackey"),
        "wrong Redis password": distinctive_secret("wrongredispw"),
        "wrong SASL password": distinctive_secret("wrongsaslpw"),
    }


@pytest.fixture(scope="session")
def security_tls(tmp_path_factory: pytest.TempPathFactory):
    """A private CA with a server certificate for 127.0.0.1 and localhost."""
    from devstack.tls import make_tls_files

    return make_tls_files(tmp_path_factory.mktemp("security-tls"))


@pytest.fixture(scope="session")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory, security_tls, secret_values) -> Iterator[object]:
    """A Kafka node with a SASL_SSL listener (SCRAM-SHA-512, the private CA) next to its PLAINTEXT one."""
    from devstack.kafka import SaslSslSettings, start_kafka

    settings = SaslSslSettings(users={SASL_USER: secret_values["SASL password"]}, tls=security_tls)
    server = start_kafka(tmp_path_factory.mktemp("kafka-sasl"), sasl_ssl=settings)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def https_kask(tmp_path_factory: pytest.TempPathFactory, cassandra_server, security_tls) -> Iterator[object]:
    """Kask serving HTTPS with a certificate of the private CA, on the session's Cassandra."""
    from devstack.kask import KaskTLS, start_kask

    server = start_kask(tmp_path_factory.mktemp("kask-https"), cassandra_server,
                        tls=KaskTLS(security_tls.cert_path, security_tls.key_path))
    yield server
    server.stop()


@pytest.fixture
def scenario_factory(tmp_path: Path) -> Iterator[object]:
    """Build Scenarios that stop their daemons at the end of the test."""
    created: list[Scenario] = []

    def build(config, env: dict[str, str] | None = None, name: str = "scenario") -> Scenario:
        workdir = tmp_path / f"{name}-{len(created)}"
        workdir.mkdir(parents=True, exist_ok=True)
        scenario = Scenario(config, workdir, env=dict(env or {}))
        created.append(scenario)
        return scenario

    yield build
    for scenario in created:
        scenario.stop_daemons()
