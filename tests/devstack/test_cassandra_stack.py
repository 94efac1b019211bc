"""Tests of devstack.cassandra and devstack.kask against a real Cassandra node from the Maven jars."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from devstack.cassandra import (
    CASSANDRA_VERSION,
    CassandraServer,
    create_kask_schema,
    cql_session,
    ensure_cassandra_jars,
    nodetool,
    start_cassandra,
)
from devstack.kask import (
    KASK_BINARY_ENV,
    STANDIN_IMPLEMENTATION,
    KaskServer,
    KaskTLS,
    build_kask_standin,
    kask_binary,
    start_kask,
)
from devstack.process import StackError, free_port, port_is_open

pytestmark = pytest.mark.stack

REAL_KASK = bool(os.environ.get(KASK_BINARY_ENV))


COMMITLOG_SYNC_PERIOD_MS = 1000


@pytest.fixture(scope="module")
def cassandra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CassandraServer]:
    server = start_cassandra(tmp_path_factory.mktemp("cassandra"), commitlog_sync_period_ms=COMMITLOG_SYNC_PERIOD_MS)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kask(tmp_path: Path, cassandra: CassandraServer) -> Iterator[KaskServer]:
    server = start_kask(tmp_path / "kask", cassandra)
    try:
        yield server
    finally:
        server.stop()


def http_request(url: str, method: str = "GET", body: bytes | None = None,
                 context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def insert_row(server: CassandraServer, key: str, value: bytes) -> None:
    with cql_session(server, "kask") as session:
        session.execute('INSERT INTO "values" (key, value) VALUES (%s, %s)', (key, value))


def read_row(server: CassandraServer, key: str) -> bytes | None:
    with cql_session(server, "kask") as session:
        row = session.execute('SELECT value FROM "values" WHERE key = %s', (key,)).one()
    return row.value if row else None


# Cassandra.

def test_jars_cached() -> None:
    lib_dir = ensure_cassandra_jars()

    assert (lib_dir / f"cassandra-all-{CASSANDRA_VERSION}.jar").exists()
    assert list(lib_dir.glob("jamm-*.jar"))
    assert list(lib_dir.glob("logback-classic-*.jar"))
    assert ensure_cassandra_jars() == lib_dir


def test_cassandra_release_version(cassandra: CassandraServer) -> None:
    with cql_session(cassandra) as session:
        row = session.execute("SELECT release_version, data_center, rack, cluster_name FROM system.local").one()

    assert row.release_version == CASSANDRA_VERSION
    assert row.data_center == "datacenter1"
    assert row.rack == "rack1"
    assert cassandra.host == "127.0.0.1"


def test_cassandra_ports_loopback(cassandra: CassandraServer) -> None:
    assert port_is_open(cassandra.native_port)
    assert port_is_open(cassandra.storage_port)
    assert cassandra.jmx_port is not None
    assert port_is_open(cassandra.jmx_port)


def test_cassandra_logs_to_workdir(cassandra: CassandraServer) -> None:
    text = cassandra.system_log.read_text()

    assert "Startup complete" in text
    assert (cassandra.workdir / "conf" / "cassandra.yaml").exists()
    assert (cassandra.workdir / "conf" / "logback.xml").exists()


def test_nodetool_status(cassandra: CassandraServer) -> None:
    output = nodetool(cassandra, "status")

    assert "UN  127.0.0.1" in output
    assert "datacenter1" in output


def test_kask_schema_layout(cassandra: CassandraServer) -> None:
    create_kask_schema(cassandra)
    create_kask_schema(cassandra)  # a second call finds everything in place

    with cql_session(cassandra) as session:
        keyspace = session.execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = 'kask'").one()
        columns = {
            row.column_name: (row.type, row.kind)
            for row in session.execute(
                "SELECT column_name, type, kind FROM system_schema.columns "
                "WHERE keyspace_name = 'kask' AND table_name = 'values'")
        }

    assert keyspace.replication["class"] == "org.apache.cassandra.locator.NetworkTopologyStrategy"
    assert keyspace.replication["datacenter1"] == "1"
    assert columns == {"key": ("text", "partition_key"), "value": ("blob", "regular")}


def test_kask_schema_rejects_name(cassandra: CassandraServer) -> None:
    with pytest.raises(StackError, match="invalid CQL name"):
        create_kask_schema(cassandra, table='values"; DROP KEYSPACE kask; --')


def test_cassandra_restart_keeps_data(cassandra: CassandraServer) -> None:
    create_kask_schema(cassandra)
    key = f"restart:{uuid.uuid4().hex}"
    insert_row(cassandra, key, b"kept")
    native_port = cassandra.native_port

    cassandra.restart()

    assert cassandra.native_port == native_port
    assert read_row(cassandra, key) == b"kept"


def test_cassandra_kill_keeps_data(cassandra: CassandraServer) -> None:
    # After SIGKILL the commit log is replayed up to its last periodic sync,
    # so the row and the schema survive once one sync period has passed.
    create_kask_schema(cassandra)
    key = f"kill:{uuid.uuid4().hex}"
    insert_row(cassandra, key, b"replayed")
    time.sleep(2 * COMMITLOG_SYNC_PERIOD_MS / 1000)

    cassandra.kill()
    assert not cassandra.is_running()
    cassandra.restart()

    assert read_row(cassandra, key) == b"replayed"


def test_cassandra_rejects_busy_port(tmp_path: Path, cassandra: CassandraServer) -> None:
    with pytest.raises(StackError, match=f"port {cassandra.native_port} .* already in use"):
        start_cassandra(tmp_path / "second", native_port=cassandra.native_port)


# Kask.

def test_standin_build_cached() -> None:
    first = build_kask_standin()
    modified_ns = first.stat().st_mtime_ns

    second = build_kask_standin()

    assert second == first
    assert second.stat().st_mtime_ns == modified_ns


def test_standin_version_flag() -> None:
    output = subprocess.run([str(build_kask_standin()), "-version"], capture_output=True, text=True, check=True)

    assert output.stdout.startswith(STANDIN_IMPLEMENTATION + " ")


def test_standin_rejects_bad_config(tmp_path: Path) -> None:
    config_path = tmp_path / "bad.yaml"
    config_path.write_text("default_ttl: -5\n")

    result = subprocess.run([str(build_kask_standin()), "--config", str(config_path)],
                            capture_output=True, text=True, timeout=30)

    assert result.returncode == 2
    assert "default_ttl is -5" in result.stderr


def test_kask_binary_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    standin = build_kask_standin()
    monkeypatch.setenv(KASK_BINARY_ENV, str(standin))
    assert kask_binary() == standin

    not_executable = tmp_path / "kask"
    not_executable.write_text("")
    monkeypatch.setenv(KASK_BINARY_ENV, str(not_executable))
    with pytest.raises(StackError, match=KASK_BINARY_ENV):
        kask_binary()


def test_kask_urls(kask: KaskServer) -> None:
    assert kask.url == f"http://127.0.0.1:{kask.port}/echoseen/v1/"
    assert kask.base_url == f"http://127.0.0.1:{kask.port}"


@pytest.mark.skipif(REAL_KASK, reason="checks how the stand-in names itself")
def test_kask_identifies_standin(kask: KaskServer) -> None:
    status, body = http_request(kask.base_url + "/healthz")
    health = json.loads(body)

    assert status == 200
    assert kask.implementation == STANDIN_IMPLEMENTATION
    assert health["implementation"] == STANDIN_IMPLEMENTATION
    assert health["version"] == kask.version
    assert "stand-in" in kask.process.log_path.read_text()


def test_kask_config_file(kask: KaskServer, cassandra: CassandraServer) -> None:
    text = kask.config_path.read_text()

    for line in ('base_uri: "/echoseen/v1/"', f"listen_port: {kask.port}", "default_ttl: 31536000",
                 f"  port: {cassandra.native_port}", '  keyspace: "kask"', '  table: "values"',
                 '  local_dc: "datacenter1"', '  hosts: ["127.0.0.1"]'):
        assert line in text.splitlines()


def test_kask_restart_keeps_port(kask: KaskServer) -> None:
    key_url = kask.url + f"restart%3A{uuid.uuid4().hex}"
    assert http_request(key_url, "POST", b"before restart")[0] == 201

    kask.restart()

    assert http_request(key_url) == (200, b"before restart")


def test_kask_kill_and_restart(kask: KaskServer) -> None:
    key_url = kask.url + f"kill%3A{uuid.uuid4().hex}"
    assert http_request(key_url, "POST", b"stored")[0] == 201

    kask.kill()
    assert not kask.is_running()
    kask.restart()

    assert http_request(key_url) == (200, b"stored")


def test_kask_stores_in_cassandra(kask: KaskServer, cassandra: CassandraServer) -> None:
    key = f"enwiki:echo:seen:alert:time:{uuid.uuid4().int % 10**9}"
    url = kask.url + urllib.parse.quote(key, safe="")

    assert http_request(url, "POST", b'JSON.."20190523123456"')[0] == 201

    assert read_row(cassandra, key) == b'JSON.."20190523123456"'


def test_kask_other_keyspace(tmp_path: Path, cassandra: CassandraServer) -> None:
    server = start_kask(tmp_path / "kask", cassandra, keyspace="echoseen_other", table="seen",
                        base_uri="/other/v1/", default_ttl_s=0)
    try:
        key_url = server.url + "k"
        assert http_request(key_url, "POST", b"v")[0] == 201
        with cql_session(cassandra, "echoseen_other") as session:
            row = session.execute("SELECT value, TTL(value) AS ttl FROM seen WHERE key = 'k'").one()
    finally:
        server.stop()

    assert row.value == b"v"
    assert row.ttl is None  # default_ttl 0 writes without a TTL


def test_kask_tls(tmp_path: Path, cassandra: CassandraServer) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert_path = tmp_path / "cert.pem"
    key_path = tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key_path), "-out", str(cert_path)],
        check=True, capture_output=True,
    )

    server = start_kask(tmp_path / "kask", cassandra, tls=KaskTLS(cert_path, key_path))
    try:
        context = server.ssl_context()
        key_url = server.url + "tls%3Akey"
        post_status = http_request(key_url, "POST", b"over TLS", context=context)[0]
        get_reply = http_request(key_url, context=context)
    finally:
        server.stop()

    assert server.url.startswith("https://127.0.0.1:")
    assert post_status == 201
    assert get_reply == (200, b"over TLS")


def test_kask_fails_without_cassandra(tmp_path: Path, cassandra: CassandraServer) -> None:
    # A handle whose native port has no Cassandra behind it: Kask must exit, not serve.
    absent = CassandraServer(config=replace(cassandra.config, native_port=free_port()),
                             process=cassandra.process, startup_s=0.0)

    with pytest.raises(StackError, match="exited"):
        start_kask(tmp_path / "kask", absent, create_schema=False, timeout_s=60)
