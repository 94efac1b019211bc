"""Kask over HTTPS with a certificate from a private CA: the replicator and verify trust it through [kask] ca_file,
and without that CA they stop with a clear TLS error instead of writing or comparing anything."""

from __future__ import annotations

import pytest

from devstack.redis_server import start_redis
from echoseen.errors import EXIT_UNAVAILABLE
from security_helpers import assert_no_secret, run_flow, with_sections, write_echo_keys

pytestmark = pytest.mark.stack


@pytest.fixture
def plain_redis(tmp_path):
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def https_config(make_config, redis_server, kafka_server, https_kask, **kask_settings):
    config = make_config(redis_server=redis_server, kafka_server=kafka_server,
                         verify={"recheck_rounds": 1, "recheck_delay_s": 0.5})
    return with_sections(config, kask={"url": https_kask.url, **kask_settings})


def test_https_kask_flow(plain_redis, kafka_server, https_kask, security_tls, make_config, scenario_factory,
                         unique_wiki, secret_values):
    assert https_kask.url.startswith("https://127.0.0.1:")
    config = https_config(make_config, plain_redis, kafka_server, https_kask,
                          ca_file=str(security_tls.ca_cert_path))
    scenario = scenario_factory(config, name="https")
    scenario.create_topics()

    document = run_flow(scenario, plain_redis.client(), unique_wiki)
    scenario.stop_daemons()

    assert document["categories"] == {"equal": 30}
    assert_no_secret(scenario.all_output(), secret_values)


def test_https_kask_without_ca_fails(plain_redis, kafka_server, https_kask, make_config, scenario_factory,
                                     unique_wiki, secret_values):
    config = https_config(make_config, plain_redis, kafka_server, https_kask, ca_file="")
    scenario = scenario_factory(config, name="https-no-ca")
    scenario.create_topics()
    write_echo_keys(plain_redis.client(), unique_wiki, 1, 3)
    backfill = scenario.cli("backfill", "--wiki", unique_wiki)
    assert backfill.status == 0, backfill.output[-3000:]

    replicator = scenario.start("replicate", wait=False)
    replicator_status = replicator.process.wait(timeout=120)
    verify = scenario.cli("verify", "--wiki", unique_wiki, "--no-store")
    scenario.stop_daemons()

    for name, status, output in (("replicator", replicator_status, replicator.log()),
                                 ("verify", verify.status, verify.output)):
        assert status == EXIT_UNAVAILABLE, f"{name} exited with {status}:\n{output[-2000:]}"
        assert "certificate verify failed" in output, f"{name}: {output[-2000:]}"
        assert "[kask] ca_file" in output, f"{name} does not name the setting: {output[-2000:]}"
        assert "Traceback" not in output, f"{name} printed a traceback: {output[-2000:]}"
    assert_no_secret(scenario.all_output(), secret_values)
