"""The `echoseen` command itself: --version and --help of every subcommand, check-config, unreachable services.

None of these tests needs a running server: unreachable services are closed loopback ports.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from dataclasses import replace

import pytest

from devstack.process import free_port
from echoseen import __version__
from echoseen import config as config_module
from echoseen.cli import SUBCOMMANDS
from echoseen.errors import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE
from helpers import ECHOSEEN
from ops_helpers import Ops

OPERATIONS = ("lag", "replay", "verify", "status", "topics")


@pytest.mark.parametrize("name", [subcommand.name for subcommand in SUBCOMMANDS])
def test_version_every_subcommand(name):
    completed = subprocess.run([ECHOSEEN, name, "--version"], capture_output=True, text=True, timeout=60)

    assert completed.returncode == EXIT_OK, completed.stderr
    assert completed.stdout.strip() == f"echoseen {__version__}"


def test_version_top_level():
    completed = subprocess.run([ECHOSEEN, "--version"], capture_output=True, text=True, timeout=60)

    assert completed.returncode == EXIT_OK
    assert completed.stdout.strip() == f"echoseen {__version__}"


@pytest.mark.parametrize("name", OPERATIONS)
def test_help_states_units_and_defaults(name):
    completed = subprocess.run([ECHOSEEN, name, "--help"], capture_output=True, text=True, timeout=60)

    assert completed.returncode == EXIT_OK, completed.stderr
    text = " ".join(completed.stdout.split())
    assert "Exit status" in text
    assert "--timeout SECONDS" in text
    assert "in seconds (default: 5)" in text
    assert "--config FILE" in text


def test_check_config_masks_secrets(make_config, tmp_path):
    config = make_config()
    config = replace(config, kafka=replace(config.kafka, client={"ssl.key.password": "hunter2",
                                                                 "security.protocol": "PLAINTEXT"}))
    ops = Ops(config, tmp_path)

    text = ops.cli("check-config", env={"ECHOSEEN_KASK_HMAC_KEY": "s3cret"})
    as_json = ops.cli("check-config", "--json", env={"ECHOSEEN_KASK_HMAC_KEY": "s3cret"})

    assert text.status == EXIT_OK, text.stderr
    assert "hunter2" not in text.stdout
    assert "s3cret" not in text.stdout
    assert '"ssl.key.password" = "***"' in text.stdout
    assert "# Kask HMAC key: set" in text.stdout
    assert "# redis password: not set" in text.stdout
    document = json.loads(as_json.stdout)
    assert document["kafka"]["client"] == {"ssl.key.password": "***", "security.protocol": "PLAINTEXT"}
    assert document["kafka"]["topic"] == config.kafka.topic
    assert "hunter2" not in as_json.stdout


def test_check_config_env_overrides_file(make_config, tmp_path):
    ops = Ops(make_config(), tmp_path)

    result = ops.cli("check-config", "--json", env={"ECHOSEEN_VERIFY_CONCURRENCY": "7",
                                                    "ECHOSEEN_KAFKA_TOPIC": "from.env"})

    assert result.status == EXIT_OK, result.stderr
    document = json.loads(result.stdout)
    assert document["verify"]["concurrency"] == 7
    assert document["kafka"]["topic"] == "from.env"


def test_check_config_text_loads_back(make_config, tmp_path):
    config = make_config(verify={"sample_keys": 3, "recheck_delay_s": 1.5})
    ops = Ops(config, tmp_path)

    result = ops.cli("check-config")

    assert result.status == EXIT_OK, result.stderr
    reloaded_path = tmp_path / "reloaded.toml"
    reloaded_path.write_text(result.stdout)
    assert tomllib.loads(result.stdout)["verify"]["sample_keys"] == 3
    reloaded = config_module.load(reloaded_path, environ={})
    assert reloaded.verify == config.verify
    assert reloaded.kafka == config.kafka


@pytest.mark.parametrize("setting, value, message", [
    ("ECHOSEEN_VERIFY_CONCURRENCY", "0", "[verify] concurrency must be at least 1"),
    ("ECHOSEEN_KASK_BODY_FORMAT", "XML", "invalid [kask] body_format 'XML'"),
    ("ECHOSEEN_VERIFY_TYPO", "1", "unknown environment variable ECHOSEEN_VERIFY_TYPO"),
])
def test_check_config_rejects_invalid(make_config, tmp_path, setting, value, message):
    result = Ops(make_config(), tmp_path).cli("check-config", env={setting: value})

    assert result.status == EXIT_CONFIG
    assert message in result.stderr


@pytest.mark.parametrize("command", [["topics"], ["lag"], ["replay", "--to-earliest"], ["status"], ["verify"]])
def test_unreachable_kafka_exit_3(make_config, tmp_path, command):
    config = make_config()
    closed_port = free_port()
    ops = Ops(replace(config, kafka=replace(config.kafka, bootstrap_servers=f"127.0.0.1:{closed_port}")), tmp_path)

    result = ops.cli(*command, "--timeout", "2", timeout_s=30)

    assert result.status == EXIT_UNAVAILABLE, result.stderr
    assert f"cannot reach Kafka at 127.0.0.1:{closed_port} ([kafka] bootstrap_servers)" in result.stderr
    assert result.duration_s < 10
    assert "Traceback" not in result.stderr


def test_unreachable_redis_exit_3(make_config, tmp_path):
    closed_port = free_port()
    config = make_config()
    ops = Ops(replace(config, redis=replace(config.redis, servers=(f"redis://127.0.0.1:{closed_port}/0",))), tmp_path)

    result = ops.cli("verify", "--no-store", "--timeout", "2", timeout_s=30)

    assert result.status == EXIT_UNAVAILABLE, result.stderr
    assert f"cannot connect to Redis 127.0.0.1:{closed_port} (from [redis] servers)" in result.stderr
    assert result.duration_s < 10
