"""The metrics and health endpoints of both daemons listen on 127.0.0.1 only, unless [metrics] listen_address
names another address. Connections go only to the ports of the daemons this test started, on addresses of this machine."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from devstack.redis_server import start_redis
from security_helpers import with_sections

pytestmark = pytest.mark.stack

# Linux routes all of 127.0.0.0/8 to the loopback interface, so this is another local address that a socket
# bound to 127.0.0.1 does not accept connections on.
OTHER_LOOPBACK = "127.0.0.2"
STARTUP_TIMEOUT_S = 90.0


def machine_addresses() -> list[str]:
    """The non-loopback addresses of this machine, as `hostname -I` lists them (IPv4 and IPv6)."""
    if shutil.which("hostname") is None:
        return []
    completed = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10, check=False)
    addresses = []
    for token in completed.stdout.split():
        try:
            address = ipaddress.ip_address(token)
        except ValueError:
            continue
        if not address.is_loopback and not address.is_link_local:
            addresses.append(str(address))
    return addresses


def accepts_connection(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect((host, port))
        except OSError:
            return False
        return True


def serves_metrics(host: str, port: int) -> bool:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        return response.status == 200 and b"echoseen_build_info" in response.read()


@pytest.fixture
def plain_redis(tmp_path):
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def daemons(plain_redis, kafka_server, kask_server, make_config, scenario_factory):
    def start(listen_address: str | None = None):
        config = make_config(redis_server=plain_redis, kafka_server=kafka_server, kask_server=kask_server)
        if listen_address is not None:
            config = with_sections(config, metrics={"listen_address": listen_address})
        scenario = scenario_factory(config, name="bind")
        scenario.create_topics()
        # Daemon.wait_ready probes 127.0.0.1, so readiness is awaited only for the default address.
        wait = listen_address is None
        return scenario, [scenario.start("capture", wait=wait), scenario.start("replicate", wait=wait)]

    return start


def test_metrics_bind_loopback_only(daemons):
    scenario, started = daemons()
    others = [OTHER_LOOPBACK, *machine_addresses()]

    for daemon in started:
        assert serves_metrics("127.0.0.1", daemon.metrics_port), daemon.command
        for address in others:
            assert not accepts_connection(address, daemon.metrics_port), \
                f"{daemon.command} accepts connections on {address}:{daemon.metrics_port}"
    assert "metrics and health endpoints on http://127.0.0.1:" in started[0].log()
    scenario.stop_daemons()


def test_metrics_listen_address_setting(daemons):
    scenario, started = daemons(listen_address=OTHER_LOOPBACK)

    for daemon in started:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not accepts_connection(OTHER_LOOPBACK, daemon.metrics_port) and time.monotonic() < deadline:
            assert daemon.process.poll() is None, daemon.log()[-2000:]
            time.sleep(0.2)
        assert serves_metrics(OTHER_LOOPBACK, daemon.metrics_port), daemon.command
        assert not accepts_connection("127.0.0.1", daemon.metrics_port), daemon.command
    scenario.stop_daemons()
