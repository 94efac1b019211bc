"""No secret in any output.

Every daemon and command runs with distinctive secret values: the Redis password, the SASL password and the
HMAC key, from a file and from the environment. Their logs, printed output, error messages, /metrics, /healthz,
/readyz and the records they write to Kafka are searched for those values.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from devstack.redis_server import start_redis
from echoseen.errors import EXIT_CONFIG, EXIT_UNAVAILABLE
from helpers import read_topic
from security_helpers import (SASL_USER, assert_no_secret, wait_for_verify, with_sections, write_echo_keys,
                              write_secret)

pytestmark = pytest.mark.stack

HMAC_KEY_VARIABLE = "SECURITY_TEST_HMAC_KEY"


@pytest.fixture
def password_redis(tmp_path, secret_values):
    server = start_redis(tmp_path / "redis-password", password=secret_values["Redis password"])
    yield server
    server.stop()


@pytest.fixture
def secured_config(make_config, password_redis, sasl_kafka, https_kask, security_tls, tmp_path, secret_values):
    """Every service secured: Redis password from a file, SCRAM over TLS to Kafka (password from the default
    variable), Kask over HTTPS with an HMAC key from a file."""
    secrets_dir = tmp_path / "secrets"
    config = make_config(verify={"recheck_rounds": 1, "recheck_delay_s": 0.5})
    return with_sections(
        config,
        redis={"servers": (f"redis://127.0.0.1:{password_redis.port}/0",),
               "password_file": str(write_secret(secrets_dir / "redis-password", secret_values["Redis password"]))},
        kafka={"bootstrap_servers": sasl_kafka.sasl_ssl_bootstrap,
               "client": {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                          "sasl.username": SASL_USER, "ssl.ca.location": str(security_tls.ca_cert_path)}},
        kask={"url": https_kask.url, "ca_file": str(security_tls.ca_cert_path),
              "hmac_key_file": str(write_secret(secrets_dir / "hmac-key", secret_values["HMAC key"]))},
    )


def test_secrets_absent_everywhere(secured_config, password_redis, sasl_kafka, scenario_factory, tmp_path,
                                   unique_wiki, secret_values):
    # The SASL password comes from the variable that [kafka] sasl_password_env names by default.
    scenario = scenario_factory(secured_config, env={"ECHOSEEN_KAFKA_SASL_PASSWORD": secret_values["SASL password"]},
                                name="secrets")
    admin = password_redis.client()

    for args in (("check-config",), ("check-config", "--json"), ("topics", "--create")):
        result = scenario.cli(*args)
        assert result.status == 0, result.output[-3000:]
    write_echo_keys(admin, unique_wiki, 1, 10)
    capture = scenario.start("capture")
    write_echo_keys(admin, unique_wiki, 100, 10)
    backfill = scenario.cli("backfill", "--wiki", unique_wiki)
    assert backfill.status == 0, backfill.output[-3000:]
    replicator = scenario.start("replicate")
    wait_for_verify(scenario, unique_wiki, 20)

    # The same HMAC key from an environment variable: verify reads back what the replicator signed.
    from_env = with_sections(secured_config, kask={"hmac_key_file": "", "hmac_key_env": HMAC_KEY_VARIABLE})
    verify_env = scenario.cli("verify", "--wiki", unique_wiki, "--json", config=from_env,
                              env={HMAC_KEY_VARIABLE: secret_values["HMAC key"]})
    assert verify_env.status == 0, verify_env.output[-3000:]
    assert verify_env.json()["categories"] == {"equal": 20}

    for args in (("lag",), ("status",), ("topics",), ("dead-letters", "list"), ("backfill", "--report"),
                 ("verify", "--wiki", unique_wiki)):
        result = scenario.cli(*args)
        assert result.status in (0, 1), f"echoseen {' '.join(args)}: {result.output[-3000:]}"
    scenario.scrape(capture)
    scenario.scrape(replicator)
    scenario.stop_daemons()

    # Failures print the settings to check, never the values tried.
    wrong_redis = with_sections(secured_config, redis={
        "password_file": str(write_secret(tmp_path / "secrets" / "wrong-redis", secret_values["wrong Redis password"]))})
    wrong_sasl = with_sections(secured_config, kafka={
        "sasl_password_file": str(write_secret(tmp_path / "secrets" / "wrong-sasl", secret_values["wrong SASL password"]))})
    assert scenario.cli("verify", "--wiki", unique_wiki, config=wrong_redis).status == EXIT_UNAVAILABLE
    assert scenario.cli("backfill", "--wiki", unique_wiki, config=wrong_redis).status == EXIT_UNAVAILABLE
    assert scenario.cli("lag", config=wrong_sasl).status == EXIT_UNAVAILABLE

    # The records the product wrote to Kafka (events, capture state, verify result), read over the PLAINTEXT
    # listener of the same node.
    records = []
    for topic in (secured_config.kafka.topic, secured_config.kafka.state_topic):
        for message in read_topic(sasl_kafka.bootstrap, topic):
            records.append((message.key() or b"").decode(errors="replace"))
            records.append((message.value() or b"").decode(errors="replace"))
            records.extend(f"{name}={value!r}" for name, value in (message.headers() or []))
    assert any('"verify' in record or "verify/last" in record for record in records)

    output = scenario.all_output()
    # The daemons' startup lines and the endpoints were collected, so the search covers them.
    assert output.count("effective configuration") >= 2
    assert "echoseen_build_info" in output
    assert_no_secret(output, secret_values)
    assert_no_secret("\n".join(records), secret_values)


def test_check_config_masks_client_secrets(secured_config, scenario_factory, secret_values):
    """A secret written straight into [kafka] client (not recommended) is masked in every printed form."""
    client = dict(secured_config.kafka.client)
    client["sasl.password"] = secret_values["SASL password"]
    client["ssl.key.password"] = secret_values["HMAC key"]
    config = replace(secured_config, kafka=replace(secured_config.kafka, client=client))
    scenario = scenario_factory(config, name="client-secrets")

    text = scenario.cli("check-config")
    as_json = scenario.cli("check-config", "--json")

    assert text.status == 0, text.output
    assert as_json.status == 0, as_json.output
    assert json.loads(as_json.stdout)["kafka"]["client"]["sasl.password"] == "***"
    assert_no_secret(scenario.all_output(), secret_values)


def test_redis_url_password_rejected(secured_config, password_redis, scenario_factory, secret_values):
    url = f"redis://:{secret_values['Redis password']}@127.0.0.1:{password_redis.port}/0"
    config = replace(secured_config, redis=replace(secured_config.redis, servers=(url,)))
    scenario = scenario_factory(config, name="url-password")

    results = [scenario.cli(command) for command in ("check-config", "capture", "verify")]

    for result in results:
        assert result.status == EXIT_CONFIG, result.output
        assert "contains a password" in result.stderr
        assert "[redis] password_file" in result.stderr
    assert_no_secret(scenario.all_output(), secret_values)
