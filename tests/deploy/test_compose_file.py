"""docker-compose.yml: structure, configuration and health checks, checked without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from echoseen import config as config_module

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = ROOT / "docker-compose.yml"
KASK_CONFIG_PATH = ROOT / "docker" / "kask" / "config.yaml"
SCHEMA_PATH = ROOT / "docker" / "cassandra" / "kask-schema.cql"
REFERENCE_PATH = ROOT / "docs" / "configuration.md"
DAEMONS = {"capture": "capture", "replicator": "replicator"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_PATH.read_text())


@pytest.fixture(scope="module")
def kask_config() -> dict:
    return yaml.safe_load(KASK_CONFIG_PATH.read_text())


def echoseen_environment(service: dict) -> dict[str, str]:
    return {name: str(value) for name, value in (service.get("environment") or {}).items()
            if name.startswith("ECHOSEEN_")}


def container_ports(service: dict) -> set[int]:
    return {int(str(mapping).rsplit(":", 1)[-1].split("/")[0]) for mapping in service.get("ports", [])}


def test_compose_services_present(compose):
    expected = {"redis", "kafka", "cassandra", "cassandra-schema", "kask", "topics", "capture", "replicator",
                "demo"}
    assert expected <= set(compose["services"])


def test_compose_depends_on_known_services(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert condition["condition"] in ("service_healthy", "service_completed_successfully",
                                              "service_started")
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which has no check"


def test_compose_echoseen_variables_documented(compose):
    documented = set(re.findall(r"`(ECHOSEEN_[A-Z0-9_]+)`", REFERENCE_PATH.read_text()))
    used = set()
    for service in compose["services"].values():
        used |= set(echoseen_environment(service))
    assert used, "no ECHOSEEN_* variable found in docker-compose.yml"
    undocumented = sorted(used - documented)
    assert not undocumented, f"not in docs/configuration.md: {undocumented}"


@pytest.mark.parametrize("service_name", ["topics", "capture", "replicator", "demo"])
def test_compose_environment_loads(compose, service_name):
    environment = echoseen_environment(compose["services"][service_name])
    config = config_module.load(None, environ=environment)
    assert config.kafka.bootstrap_servers == "kafka:9092"


def test_compose_redis_matches_config(compose):
    environment = echoseen_environment(compose["services"]["capture"])
    url = urlsplit(environment["ECHOSEEN_REDIS_SERVERS"])
    assert url.hostname in compose["services"]
    assert url.hostname == "redis"
    assert url.port == 6379
    command = compose["services"]["redis"]["command"]
    flags = command[command.index("--notify-keyspace-events") + 1]
    # "$$" is Compose's escape for a literal "$".
    assert flags.replace("$$", "$") == "Kg$xe"


def test_compose_kafka_matches_config(compose):
    environment = echoseen_environment(compose["services"]["replicator"])
    host, port = environment["ECHOSEEN_KAFKA_BOOTSTRAP_SERVERS"].split(":")
    assert host in compose["services"]
    kafka = compose["services"][host]["environment"]
    assert f"PLAINTEXT://{host}:{port}" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"PLAINTEXT://:{port}" in kafka["KAFKA_LISTENERS"].split(",")
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", kafka["CLUSTER_ID"])


def test_compose_kask_matches_config(compose, kask_config):
    environment = echoseen_environment(compose["services"]["replicator"])
    url = urlsplit(environment["ECHOSEEN_KASK_URL"])
    assert url.hostname == "kask"
    assert url.hostname in compose["services"]
    assert url.port == kask_config["listen_port"]
    assert url.path == kask_config["base_uri"] == "/echoseen/v1/"
    assert kask_config["listen_address"] == "0.0.0.0"
    assert kask_config["cassandra"]["hosts"] == ["cassandra"]
    assert environment["ECHOSEEN_KASK_BODY_FORMAT"] == "JSON"


def test_compose_kask_schema_matches(kask_config):
    schema = SCHEMA_PATH.read_text()
    keyspace = kask_config["cassandra"]["keyspace"]
    table = kask_config["cassandra"]["table"]
    assert f"CREATE KEYSPACE IF NOT EXISTS {keyspace}" in schema
    assert f'{keyspace}."{table}" (key text PRIMARY KEY, value blob)' in schema


def test_compose_kask_dockerfiles_exist(compose):
    dockerfile = compose["services"]["kask"]["build"]["dockerfile"]
    default = re.fullmatch(r"\$\{KASK_DOCKERFILE:-(.+)\}", dockerfile)
    assert default is not None, dockerfile
    assert (ROOT / default.group(1)).is_file()
    assert (ROOT / "docker" / "kask-standin" / "Dockerfile").is_file()


@pytest.mark.parametrize("service_name", list(DAEMONS))
def test_compose_daemon_healthcheck(compose, service_name):
    service = compose["services"][service_name]
    environment = echoseen_environment(service)
    port = int(environment[f"ECHOSEEN_{DAEMONS[service_name].upper()}_METRICS_PORT"])
    assert environment["ECHOSEEN_METRICS_LISTEN_ADDRESS"] == "0.0.0.0"
    test = service["healthcheck"]["test"]
    urls = [urlsplit(item) for item in test if str(item).startswith("http")]
    assert {url.path for url in urls} == {"/healthz", "/readyz"}
    assert {url.port for url in urls} == {port}
    assert port in container_ports(service)


def test_compose_daemon_commands(compose):
    services = compose["services"]
    assert services["capture"]["command"] == ["capture"]
    assert services["replicator"]["command"] == ["replicate"]
    assert services["topics"]["command"] == ["topics", "--create"]
    for name in ("capture", "replicator"):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_compose_demo_targets_daemons(compose):
    demo = compose["services"]["demo"]
    assert demo["profiles"] == ["demo"]
    command = demo["command"]
    assert "--external" in command
    for name in DAEMONS:
        url = urlsplit(command[command.index(f"--{name}-url") + 1])
        environment = echoseen_environment(compose["services"][name])
        assert url.hostname == name
        assert url.port == int(environment[f"ECHOSEEN_{name.upper()}_METRICS_PORT"])


def test_compose_healthcheck_script_exists():
    dockerfile = (ROOT / "docker" / "echoseen" / "Dockerfile").read_text()
    assert "docker/echoseen/healthcheck.py /usr/local/bin/echoseen-healthcheck" in dockerfile
    assert (ROOT / "docker" / "echoseen" / "healthcheck.py").is_file()
