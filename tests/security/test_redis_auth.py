"""Redis with a password (requirepass): capture, backfill and verify authenticate; a wrong password fails clearly."""

from __future__ import annotations

import pytest

from devstack.redis_server import start_redis
from echoseen.errors import EXIT_UNAVAILABLE
from security_helpers import assert_no_secret, run_flow, with_sections, write_echo_keys, write_secret

pytestmark = pytest.mark.stack


@pytest.fixture
def password_redis(tmp_path, secret_values):
    server = start_redis(tmp_path / "redis-password", password=secret_values["Redis password"])
    yield server
    server.stop()


def redis_config(make_config, server, kafka_server, kask_server, **redis_settings):
    config = make_config(kafka_server=kafka_server, kask_server=kask_server,
                         verify={"recheck_rounds": 1, "recheck_delay_s": 0.5})
    return with_sections(config, redis={"servers": (f"redis://127.0.0.1:{server.port}/0",), **redis_settings})


def test_password_file_flow(password_redis, kafka_server, kask_server, make_config, scenario_factory, tmp_path,
                            unique_wiki, secret_values):
    password_file = write_secret(tmp_path / "secrets" / "redis-password", secret_values["Redis password"])
    config = redis_config(make_config, password_redis, kafka_server, kask_server, password_file=str(password_file))
    scenario = scenario_factory(config, name="password-file")
    scenario.create_topics()

    document = run_flow(scenario, password_redis.client(), unique_wiki)
    scenario.stop_daemons()

    assert document["categories"] == {"equal": 30}
    assert_no_secret(scenario.all_output(), secret_values)


def test_password_env_verify(password_redis, kafka_server, kask_server, make_config, scenario_factory, unique_wiki,
                             secret_values):
    config = redis_config(make_config, password_redis, kafka_server, kask_server,
                          password_env="SECURITY_TEST_REDIS_PASSWORD")
    scenario = scenario_factory(config, env={"SECURITY_TEST_REDIS_PASSWORD": secret_values["Redis password"]},
                                name="password-env")
    write_echo_keys(password_redis.client(), unique_wiki, 1, 3)

    report = scenario.cli("backfill", "--wiki", unique_wiki, "--report", "--json")
    verify = scenario.cli("verify", "--wiki", unique_wiki, "--no-store", "--json")

    assert report.status == 0, report.output
    assert verify.status == 1, verify.output
    assert verify.json()["categories"] == {"missing_in_kask": 3}
    assert_no_secret(scenario.all_output(), secret_values)


@pytest.mark.parametrize("source", ["file", "none"])
def test_wrong_password_fails(password_redis, kafka_server, kask_server, make_config, scenario_factory, tmp_path,
                              secret_values, source):
    settings = {"password_env": ""}
    if source == "file":
        wrong_file = write_secret(tmp_path / "secrets" / "wrong", secret_values["wrong Redis password"])
        settings["password_file"] = str(wrong_file)
    config = redis_config(make_config, password_redis, kafka_server, kask_server, **settings)
    scenario = scenario_factory(config, name=f"wrong-{source}")
    scenario.create_topics()

    capture = scenario.start("capture", wait=False)
    capture_status = capture.process.wait(timeout=60)
    backfill = scenario.cli("backfill")
    verify = scenario.cli("verify", "--no-store")
    scenario.stop_daemons()

    for name, status, output in (("capture", capture_status, capture.log()),
                                 ("backfill", backfill.status, backfill.output),
                                 ("verify", verify.status, verify.output)):
        assert status == EXIT_UNAVAILABLE, f"{name} exited with {status}:\n{output[-2000:]}"
        assert f"Redis 127.0.0.1:{password_redis.port}" in output, f"{name}: {output[-2000:]}"
        assert "[redis] password_file" in output, f"{name} does not name the setting: {output[-2000:]}"
        assert "password_env" in output, f"{name} does not name the setting: {output[-2000:]}"
        assert "Traceback" not in output, f"{name} printed a traceback: {output[-2000:]}"
    assert_no_secret(scenario.all_output(), secret_values)
