"""Redis over TLS only (tls-port, a private CA, client certificates required): the product connects with
rediss:// URLs, [redis] tls_ca_file and a client certificate, and fails clearly without them."""

from __future__ import annotations

import pytest

from devstack.redis_server import start_redis
from devstack.tls import make_client_certificate
from echoseen.errors import EXIT_UNAVAILABLE
from security_helpers import assert_no_secret, run_flow, with_sections, write_echo_keys, write_secret

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def client_certificate(security_tls):
    return make_client_certificate(security_tls, "echoseen-capture")


@pytest.fixture
def tls_redis(tmp_path, security_tls, client_certificate, secret_values):
    server = start_redis(tmp_path / "redis-tls", tls=security_tls, tls_client_certificate=client_certificate,
                         password=secret_values["Redis password"])
    yield server
    server.stop()


def tls_config(make_config, server, kafka_server, kask_server, password_file, **redis_settings):
    config = make_config(kafka_server=kafka_server, kask_server=kask_server,
                         verify={"recheck_rounds": 1, "recheck_delay_s": 0.5})
    settings = {"servers": (f"rediss://127.0.0.1:{server.port}/0",), "password_file": str(password_file)}
    settings.update(redis_settings)
    return with_sections(config, redis=settings)


@pytest.fixture
def password_file(tmp_path, secret_values):
    return write_secret(tmp_path / "secrets" / "redis-password", secret_values["Redis password"])


def test_tls_client_certificate_flow(tls_redis, kafka_server, kask_server, make_config, scenario_factory,
                                     security_tls, client_certificate, password_file, unique_wiki, secret_values):
    config = tls_config(make_config, tls_redis, kafka_server, kask_server, password_file,
                        tls_ca_file=str(security_tls.ca_cert_path),
                        tls_cert_file=str(client_certificate.cert_path),
                        tls_key_file=str(client_certificate.key_path))
    scenario = scenario_factory(config, name="tls")
    scenario.create_topics()

    document = run_flow(scenario, tls_redis.client(), unique_wiki)
    scenario.stop_daemons()

    assert document["categories"] == {"equal": 30}
    assert_no_secret(scenario.all_output(), secret_values)


@pytest.mark.parametrize("case, expected", [
    ("no CA file", ("CERTIFICATE_VERIFY_FAILED", "[redis] tls_ca_file")),
    ("no client certificate", ("TLS handshake", "tls_cert_file")),
    ("plain redis:// URL", ("rediss://",)),
])
def test_tls_misconfigured_fails(tls_redis, kafka_server, kask_server, make_config, scenario_factory, security_tls,
                                 client_certificate, password_file, unique_wiki, secret_values, case, expected):
    settings = {"tls_ca_file": str(security_tls.ca_cert_path), "tls_cert_file": str(client_certificate.cert_path),
                "tls_key_file": str(client_certificate.key_path)}
    if case == "no CA file":
        settings["tls_ca_file"] = ""
    elif case == "no client certificate":
        settings.update(tls_cert_file="", tls_key_file="")
    else:
        settings["servers"] = (f"redis://127.0.0.1:{tls_redis.port}/0",)
    config = tls_config(make_config, tls_redis, kafka_server, kask_server, password_file, **settings)
    config = with_sections(config, redis={"socket_timeout_s": 2.0})
    scenario = scenario_factory(config, name="tls-wrong")
    scenario.create_topics()
    write_echo_keys(tls_redis.client(), unique_wiki, 1, 2)

    capture = scenario.start("capture", wait=False)
    capture_status = capture.process.wait(timeout=90)
    backfill = scenario.cli("backfill", "--wiki", unique_wiki)
    verify = scenario.cli("verify", "--wiki", unique_wiki, "--no-store")
    scenario.stop_daemons()

    for name, status, output in (("capture", capture_status, capture.log()),
                                 ("backfill", backfill.status, backfill.output),
                                 ("verify", verify.status, verify.output)):
        assert status == EXIT_UNAVAILABLE, f"{name} ({case}) exited with {status}:\n{output[-2000:]}"
        assert f"Redis 127.0.0.1:{tls_redis.port}" in output, f"{name} ({case}): {output[-2000:]}"
        for text in expected:
            assert text in output, f"{name} ({case}) does not say {text!r}: {output[-2000:]}"
        assert "Traceback" not in output, f"{name} ({case}) printed a traceback: {output[-2000:]}"
    assert_no_secret(scenario.all_output(), secret_values)
