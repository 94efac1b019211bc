"""Kafka through a SASL_SSL listener (SCRAM-SHA-512 inside TLS with a private CA), set up with [kafka] client
settings and the password from [kafka] sasl_password_file or sasl_password_env."""

from __future__ import annotations

import time

import pytest

from devstack.redis_server import start_redis
from echoseen.errors import EXIT_CONFIG, EXIT_UNAVAILABLE
from security_helpers import SASL_USER, assert_no_secret, run_flow, with_sections, write_secret

pytestmark = pytest.mark.stack


@pytest.fixture
def plain_redis(tmp_path):
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def sasl_client_settings(sasl_kafka, username: str = SASL_USER) -> dict[str, str]:
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": username,
        "ssl.ca.location": str(sasl_kafka.sasl_ssl.tls.ca_cert_path),
    }


def sasl_config(make_config, redis_server, sasl_kafka, kask_server, **kafka_settings):
    config = make_config(redis_server=redis_server, kask_server=kask_server,
                         verify={"recheck_rounds": 1, "recheck_delay_s": 0.5})
    settings = {"bootstrap_servers": sasl_kafka.sasl_ssl_bootstrap, "client": sasl_client_settings(sasl_kafka)}
    settings.update(kafka_settings)
    return with_sections(config, kafka=settings)


def test_sasl_ssl_flow(plain_redis, sasl_kafka, kask_server, make_config, scenario_factory, tmp_path, unique_wiki,
                       secret_values):
    password_file = write_secret(tmp_path / "secrets" / "sasl-password", secret_values["SASL password"])
    config = sasl_config(make_config, plain_redis, sasl_kafka, kask_server, sasl_password_file=str(password_file))
    scenario = scenario_factory(config, name="sasl")

    topics = scenario.cli("topics", "--create")
    assert topics.status == 0, topics.output[-3000:]
    run_flow(scenario, plain_redis.client(), unique_wiki)
    # The replicator commits offsets every [replicator] commit_interval_s, so the lag reaches 0 a little later.
    deadline = time.monotonic() + 60
    while True:
        lag = scenario.cli("lag", "--json")
        if lag.status != 0 or lag.json()["total_lag_records"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    stored = scenario.cli("verify", "--wiki", unique_wiki)
    status = scenario.cli("status")
    scenario.stop_daemons()

    assert lag.status == 0, lag.output[-3000:]
    assert lag.json()["group_id"] == config.replicator.group_id
    assert lag.json()["total_lag_records"] == 0
    assert stored.status == 0, stored.output[-3000:]
    assert status.status in (0, 1), status.output[-3000:]
    assert "verify" in status.stdout
    assert_no_secret(scenario.all_output(), secret_values)


def test_sasl_password_env(plain_redis, sasl_kafka, kask_server, make_config, scenario_factory, secret_values):
    config = sasl_config(make_config, plain_redis, sasl_kafka, kask_server,
                         sasl_password_env="SECURITY_TEST_SASL_PASSWORD")
    scenario = scenario_factory(config, env={"SECURITY_TEST_SASL_PASSWORD": secret_values["SASL password"]},
                                name="sasl-env")

    topics = scenario.cli("topics", "--create")
    check = scenario.cli("topics")

    assert topics.status == 0, topics.output[-3000:]
    assert check.status == 0, check.output[-3000:]
    assert_no_secret(scenario.all_output(), secret_values)


@pytest.mark.parametrize("case", ["wrong password", "no password", "no CA file"])
def test_sasl_misconfigured_fails(plain_redis, sasl_kafka, kask_server, make_config, scenario_factory, tmp_path,
                                  secret_values, case):
    good = sasl_config(make_config, plain_redis, sasl_kafka, kask_server, sasl_password_env="",
                       sasl_password_file=str(write_secret(tmp_path / "secrets" / "good",
                                                           secret_values["SASL password"])))
    scenario_factory(good, name="sasl-setup").create_topics()

    settings: dict = {"sasl_password_env": ""}
    exit_status = EXIT_UNAVAILABLE
    if case == "wrong password":
        wrong_file = write_secret(tmp_path / "secrets" / "wrong", secret_values["wrong SASL password"])
        settings["sasl_password_file"] = str(wrong_file)
        expected = ("invalid credentials", "[kafka] sasl_password_file")
    elif case == "no password":
        # Found before any connection: a configuration error.
        exit_status = EXIT_CONFIG
        expected = ("no SASL password is set", "[kafka] sasl_password_file")
    else:
        settings["sasl_password_file"] = good.kafka.sasl_password_file
        settings["client"] = {key: value for key, value in sasl_client_settings(sasl_kafka).items()
                              if key != "ssl.ca.location"}
        expected = ("certificate verify failed", "ssl.ca.location")
    config = sasl_config(make_config, plain_redis, sasl_kafka, kask_server, **settings)
    scenario = scenario_factory(config, name="sasl-wrong")

    capture = scenario.start("capture", wait=False)
    replicator = scenario.start("replicate", wait=False)
    capture_status = capture.process.wait(timeout=120)
    replicator_status = replicator.process.wait(timeout=120)
    lag = scenario.cli("lag")
    scenario.stop_daemons()

    for name, status, output in (("capture", capture_status, capture.log()),
                                 ("replicator", replicator_status, replicator.log()),
                                 ("lag", lag.status, lag.output)):
        assert status == exit_status, f"{name} ({case}) exited with {status}:\n{output[-2000:]}"
        for text in expected:
            assert text in output, f"{name} ({case}) does not say {text!r}:\n{output[-2000:]}"
        assert "Traceback" not in output, f"{name} ({case}) printed a traceback:\n{output[-2000:]}"
    assert_no_secret(scenario.all_output(), secret_values)
