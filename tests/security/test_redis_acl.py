"""The least-privilege Redis ACL user of docs/security.md: the product works with it, and it can change nothing.

The ACL lines are read from docs/security.md, so the documented lines are the
tested ones. They need Redis 7.0 or later (selectors, EVALSHA_RO, %R~).
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devstack.redis_server import start_redis
from echoseen.errors import EXIT_UNAVAILABLE
from security_helpers import assert_no_secret, run_flow, with_sections, write_echo_keys, write_secret

pytestmark = pytest.mark.stack

SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
PASSWORD_PLACEHOLDER = "#<sha256-hex-of-the-password>"
ADMIN_PASSWORD = "admin-password-of-the-security-tests"
ECHO_KEY = "enwiki:echo:seen:alert:time:7"


def documented_acl_line(channel_mode: str) -> str:
    """Return the documented `user echoseen ...` line for a channel mode (keyspace or keyevent)."""
    lines = [line.strip() for line in SECURITY_DOC.read_text().splitlines() if line.strip().startswith("user echoseen ")]
    wanted = "+psubscribe" if channel_mode == "keyspace" else "+subscribe"
    matching = [line for line in lines if re.search(rf"\s{re.escape(wanted)}(\s|$)", line)]
    assert len(matching) == 1, f"expected one documented ACL line with {wanted} in {SECURITY_DOC}, got {matching}"
    return matching[0]


def write_acl_file(path: Path, user_line: str, password: str) -> Path:
    assert PASSWORD_PLACEHOLDER in user_line, f"the documented line lacks {PASSWORD_PLACEHOLDER}: {user_line}"
    user_line = user_line.replace(PASSWORD_PLACEHOLDER, "#" + hashlib.sha256(password.encode()).hexdigest())
    admin_hash = hashlib.sha256(ADMIN_PASSWORD.encode()).hexdigest()
    path.write_text(f"user default on #{admin_hash} ~* &* +@all\n{user_line}\n")
    return path


def start_acl_redis(workdir: Path, user_line: str, password: str, notify_flags: str):
    acl_file = write_acl_file(workdir / "users.acl", user_line, password)
    return start_redis(workdir / "redis", acl_file=acl_file, notify_keyspace_events=notify_flags)


def admin_client(server) -> redis.Redis:
    return server.client(username="default", password=ADMIN_PASSWORD)


def acl_config(make_config, server, kafka_server, kask_server, password_file: Path, channel_mode: str):
    config = make_config(kafka_server=kafka_server, kask_server=kask_server,
                         verify={"recheck_rounds": 1, "recheck_delay_s": 0.5})
    return with_sections(config, redis={"servers": (f"redis://127.0.0.1:{server.port}/0",), "username": "echoseen",
                                        "password_file": str(password_file)},
                         capture={"channel_mode": channel_mode})


@pytest.mark.parametrize("channel_mode, notify_flags", [("keyspace", "Kg$xe"), ("keyevent", "Eg$xe")])
def test_acl_user_flow(tmp_path, kafka_server, kask_server, make_config, scenario_factory, unique_wiki,
                       secret_values, channel_mode, notify_flags):
    password = secret_values["Redis password"]
    server = start_acl_redis(tmp_path, documented_acl_line(channel_mode), password, notify_flags)
    try:
        password_file = write_secret(tmp_path / "secrets" / "redis-password", password)
        config = acl_config(make_config, server, kafka_server, kask_server, password_file, channel_mode)
        scenario = scenario_factory(config, name=f"acl-{channel_mode}")
        scenario.create_topics()

        document = run_flow(scenario, admin_client(server), unique_wiki)
        scenario.stop_daemons()
    finally:
        server.stop()

    assert document["categories"] == {"equal": 30}
    output = scenario.all_output()
    # Without CONFIG GET the capture cannot read notify-keyspace-events, so it logs a warning and relies on its
    # heartbeat.
    assert "cannot read notify-keyspace-events" in output
    assert "NOPERM" not in output
    assert "no permissions" not in output
    assert_no_secret(output, secret_values)


def test_acl_user_missing_flags_noticed(tmp_path, kafka_server, kask_server, make_config, scenario_factory,
                                        secret_values):
    """Without CONFIG GET the capture cannot check notify-keyspace-events; its heartbeat finds them missing."""
    password = secret_values["Redis password"]
    server = start_acl_redis(tmp_path, documented_acl_line("keyspace"), password, "")
    try:
        password_file = write_secret(tmp_path / "secrets" / "redis-password", password)
        config = acl_config(make_config, server, kafka_server, kask_server, password_file, "keyspace")
        scenario = scenario_factory(config, name="acl-no-flags")
        scenario.create_topics()
        capture = scenario.start("capture")

        deadline = time.monotonic() + 60
        while capture.metric("echoseen_capture_gaps_total", 'reason="silent_subscription"') < 1:
            assert time.monotonic() < deadline, capture.log()[-3000:]
            time.sleep(0.5)
        scenario.stop_daemons()
    finally:
        server.stop()

    output = scenario.all_output()
    assert "cannot read notify-keyspace-events" in output
    assert "stopped delivering" in output
    assert_no_secret(output, secret_values)


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory, secret_values):
    server = start_acl_redis(tmp_path_factory.mktemp("acl-redis"), documented_acl_line("keyspace"),
                             secret_values["Redis password"], "Kg$xe")
    admin = admin_client(server)
    admin.set(ECHO_KEY, b's:14:"20240105000000";')
    admin.set("echoseen:capture:lock", b"held by the test")
    yield server
    server.stop()


@pytest.fixture
def acl_user(acl_redis, secret_values):
    client = acl_redis.client(username="echoseen", password=secret_values["Redis password"],
                              retry=Retry(NoBackoff(), 0))
    yield client
    client.close()


@pytest.mark.parametrize("command", [
    ("SET", ECHO_KEY, "x"),
    ("SETEX", ECHO_KEY, "10", "x"),
    ("DEL", ECHO_KEY),
    ("UNLINK", ECHO_KEY),
    ("EXPIRE", ECHO_KEY, "1"),
    ("RENAME", ECHO_KEY, "echoseen:capture:stolen"),
    ("EVALSHA", "0" * 40, "1", ECHO_KEY),
    ("EVAL", "return redis.call('SET', KEYS[1], 'x')", "1", ECHO_KEY),
    ("EVAL", "return redis.call('DEL', 'enwiki:echo:seen:alert:time:7')", "0"),
    ("SET", "unrelated:key", "x"),
    ("GET", "unrelated:key"),
    ("CONFIG", "SET", "notify-keyspace-events", ""),
    ("CONFIG", "GET", "requirepass"),
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("KEYS", "*"),
    ("ACL", "LIST"),
    ("SHUTDOWN", "NOSAVE"),
    ("SCRIPT", "FLUSH"),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "TYPE", "normal"),
    ("MONITOR",),
    ("PUBLISH", "__keyspace@0__:enwiki:echo:seen:alert:time:7", "set"),
    ("PSUBSCRIBE", "*"),
])
def test_acl_user_denied(acl_user, acl_redis, command):
    with pytest.raises(redis.exceptions.ResponseError) as raised:
        acl_user.execute_command(*command)

    assert isinstance(raised.value, redis.exceptions.NoPermissionError) or "permission" in str(raised.value) \
        or "can't access" in str(raised.value), f"{command} failed for another reason: {raised.value}"
    assert admin_client(acl_redis).get(ECHO_KEY) == b's:14:"20240105000000";'


def test_acl_user_reads(acl_user):
    """The reads the product needs work: the Echo key through EVALSHA_RO, its own lock key for writing."""
    sha = acl_user.script_load("#!lua flags=no-writes\nreturn redis.call('GET', KEYS[1])")

    assert acl_user.evalsha_ro(sha, 1, ECHO_KEY) == b's:14:"20240105000000";'
    assert acl_user.get("echoseen:capture:lock") == b"held by the test"
    assert acl_user.set("echoseen:capture:heartbeat:probe:1", b"1", px=1000)


def test_acl_missing_permission_message(tmp_path, kafka_server, kask_server, make_config, scenario_factory,
                                        unique_wiki, secret_values):
    """A user without SCAN makes the backfill and verify fail with a message that names the ACL and the doc."""
    password = secret_values["Redis password"]
    line = documented_acl_line("keyspace").replace(" +scan", "")
    server = start_acl_redis(tmp_path, line, password, "Kg$xe")
    try:
        write_echo_keys(admin_client(server), unique_wiki, 1, 3)
        password_file = write_secret(tmp_path / "secrets" / "redis-password", password)
        config = acl_config(make_config, server, kafka_server, kask_server, password_file, "keyspace")
        scenario = scenario_factory(config, name="acl-no-scan")
        scenario.create_topics()

        backfill = scenario.cli("backfill", "--wiki", unique_wiki)
        verify = scenario.cli("verify", "--wiki", unique_wiki, "--no-store")
    finally:
        server.stop()

    for name, result in (("backfill", backfill), ("verify", verify)):
        assert result.status == EXIT_UNAVAILABLE, f"{name}: {result.output[-2000:]}"
        assert "ACL user" in result.output, f"{name}: {result.output[-2000:]}"
        assert "'scan'" in result.output, f"{name}: {result.output[-2000:]}"
        assert "docs/security.md" in result.output, f"{name}: {result.output[-2000:]}"
    assert_no_secret(scenario.all_output(), secret_values)
