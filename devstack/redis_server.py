"""Local Redis servers for tests, the demo and benchmarks: one server, a cluster of primaries, TLS files.

The servers are Debian's redis-server (7.0 on this project's machines, built
with TLS), listening on 127.0.0.1 on free ports. Persistence is off (`save ""`,
`appendonly no`), so a restart or a crash loses every key, as when a cache
host restarts.

Layout of a server's work directory:

    redis.conf   written on every start
    data/        Redis's working directory (`dir`), with nodes.conf in cluster mode
    redis.log    the server's log (Redis logs to standard output)
"""

from __future__ import annotations

import logging
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.retry import Retry

from devstack.process import LOOPBACK, ManagedProcess, StackError, free_port, port_is_open, run_checked
# The TLS helpers moved to devstack.tls; they stay importable from here for existing callers.
from devstack.tls import CertificateFiles, TlsFiles

log = logging.getLogger(__name__)

# Keyspace channels (K) for generic (g), string ($), expired (x) and evicted (e)
# events. A subscriber of keyevent channels passes flags with E instead.
DEFAULT_NOTIFY_KEYSPACE_EVENTS = "Kg$xe"

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
CLUSTER_READY_TIMEOUT_S = 30.0
CLUSTER_NODE_TIMEOUT_MS = 5000
MINIMUM_CLUSTER_PRIMARIES = 3


def redis_server_executable() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise StackError("redis-server not found on PATH; install it with: apt-get install -y redis-server")
    return found


def redis_cli_executable() -> str:
    found = shutil.which("redis-cli")
    if found is None:
        raise StackError("redis-cli not found on PATH; install it with: apt-get install -y redis-tools")
    return found


# ---------------------------------------------------------------------------
# One server
# ---------------------------------------------------------------------------

def _config_value(value: str) -> str:
    """Quote a redis.conf argument when it is empty or contains characters that the config parser splits on."""
    if value and not any(character.isspace() or character in "\"'\\" for character in value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@dataclass
class RedisServer:
    """Handle of one local redis-server; start_redis() creates and starts it."""

    workdir: Path
    port: int
    config_path: Path
    password: str | None = None
    tls: TlsFiles | None = None
    process: ManagedProcess | None = None
    last_startup_s: float | None = field(default=None, repr=False)
    host: str = LOOPBACK
    # The certificate client() presents when the server requires client certificates (tls-auth-clients yes).
    client_certificate: CertificateFiles | None = None

    @property
    def url(self) -> str:
        """URL of database 0: redis://, or rediss:// with TLS, with the password if there is one.

        A TLS client also needs the CA file (``tls.ca_cert_path``), which a URL cannot carry.
        """
        scheme = "rediss" if self.tls else "redis"
        credentials = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"{scheme}://{credentials}{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def client(self, **kwargs) -> redis.Redis:
        """Return a redis.Redis for this server; keyword arguments override the defaults (password, TLS)."""
        options: dict = {"host": self.host, "port": self.port, "password": self.password}
        if self.tls is not None:
            options.update(ssl=True, ssl_ca_certs=str(self.tls.ca_cert_path), ssl_cert_reqs="required")
            if self.client_certificate is not None:
                options.update(ssl_certfile=str(self.client_certificate.cert_path),
                               ssl_keyfile=str(self.client_certificate.key_path))
        options.update(kwargs)
        return redis.Redis(**options)

    def is_running(self) -> bool:
        return self.process is not None and self.process.is_running()

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Start redis-server on the written config, wait until it replies to PING, and return the seconds it took."""
        if self.is_running():
            raise StackError(f"Redis at {self.host}:{self.port} is already running (pid {self.process.pid})")
        if port_is_open(self.port):
            raise StackError(
                f"Redis port {self.port} on {self.host} is in use by another process; "
                "stop it or start Redis on another port"
            )

        self.process = ManagedProcess(
            name=f"redis-{self.port}",
            argv=[redis_server_executable(), str(self.config_path)],
            log_path=self.log_path,
            cwd=self.workdir,
        ).start()

        # No client-side retries: wait_until already polls, and redis-py's default
        # retries with backoff would make each failed poll last seconds.
        probe = self.client(socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))

        def answers_ping() -> bool:
            try:
                return bool(probe.ping())
            except (AuthenticationError, NoPermissionError):
                # An ACL file may disable the default user, but the server is up if it rejects the probe.
                return True

        try:
            self.last_startup_s = self.process.wait_until(answers_ping, timeout_s, "answering PING")
        except StackError:
            self.process.stop(timeout_s=5)
            raise
        finally:
            probe.close()
        log.info("Redis ready at %s:%d%s in %.2f s (pid %d)", self.host, self.port,
                 " (TLS)" if self.tls else "", self.last_startup_s, self.process.pid)
        return self.last_startup_s

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop with SIGTERM, SIGKILL after ``timeout_s``. Without persistence every key is lost."""
        if self.process is not None:
            self.process.stop(timeout_s=timeout_s)

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would."""
        if self.process is None:
            return
        self.process.signal(signal.SIGKILL)
        if self.process.popen is not None:
            self.process.popen.wait(timeout=30)
        # Reaps the handle and removes it from the stop-at-exit list.
        self.process.stop(timeout_s=1)

    def restart(self, downtime_s: float = 0.0, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Stop, stay down for ``downtime_s``, then start on the same port and directory.

        Returns the seconds the new process took to reply to PING.
        """
        self.stop()
        if downtime_s > 0:
            log.info("Redis at %s:%d stays down for %.1f s", self.host, self.port, downtime_s)
            time.sleep(downtime_s)
        return self.start(timeout_s=timeout_s)


def _redis_config(workdir: Path, port: int, notify_keyspace_events: str | None, password: str | None,
                  acl_file: Path | None, tls: TlsFiles | None,
                  extra_config: Mapping[str, str] | None, tls_auth_clients: bool = False) -> dict[str, str]:
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "bind": LOOPBACK,
        "port": str(port),
        "daemonize": "no",
        "dir": str(data_dir),
        # Standard output goes to redis.log through ManagedProcess.
        "logfile": "",
        "loglevel": "notice",
        # No persistence: a restart starts empty, as a cache host does.
        "save": "",
        "appendonly": "no",
        "notify-keyspace-events": notify_keyspace_events or "",
    }
    if password is not None:
        config["requirepass"] = password
        # A cluster primary authenticates to the others with it; harmless on a single server.
        config["masterauth"] = password
    if acl_file is not None:
        config["aclfile"] = str(Path(acl_file).resolve())
    if tls is not None:
        # TLS only: the plain-text port is off, so a client without TLS cannot connect.
        config["port"] = "0"
        config["tls-port"] = str(port)
        config["tls-cert-file"] = str(tls.cert_path)
        config["tls-key-file"] = str(tls.key_path)
        config["tls-ca-cert-file"] = str(tls.ca_cert_path)
        # With "yes" a client must present a certificate signed by the same CA.
        config["tls-auth-clients"] = "yes" if tls_auth_clients else "no"
    for key, value in (extra_config or {}).items():
        config[key] = str(value)
    return config


def _write_redis_config(path: Path, config: Mapping[str, str]) -> None:
    lines = ["# Written by devstack.redis_server on every start; pass extra_config instead of editing."]
    for key, value in config.items():
        if key == "save" and value == "":
            lines.append('save ""')
        else:
            lines.append(f"{key} {_config_value(value)}")
    path.write_text("\n".join(lines) + "\n")


def start_redis(workdir: Path, port: int | None = None,
                notify_keyspace_events: str | None = DEFAULT_NOTIFY_KEYSPACE_EVENTS,
                password: str | None = None, acl_file: Path | None = None, tls: TlsFiles | None = None,
                extra_config: Mapping[str, str] | None = None,
                timeout_s: float = READY_TIMEOUT_S, *,
                tls_client_certificate: CertificateFiles | None = None) -> RedisServer:
    """Start redis-server in ``workdir`` on ``port`` (None picks a free one) and wait until it answers PING.

    ``notify_keyspace_events`` is the server's notify-keyspace-events flags
    (None or "" turns notifications off). ``password`` sets requirepass;
    ``acl_file`` loads users from an ACL file instead, so the two exclude each
    other. With ``tls`` the server listens only with TLS on ``port``; with
    ``tls_client_certificate`` as well it requires every client to present a
    certificate signed by the CA of ``tls`` (tls-auth-clients yes), and the
    handle's client() presents this one.
    ``extra_config`` adds or overrides redis.conf directives and is applied last.
    """
    if password is not None and acl_file is not None:
        raise ValueError("pass either password or acl_file: an ACL file defines the default user's password itself")
    if acl_file is not None and not Path(acl_file).is_file():
        raise ValueError(f"acl_file {acl_file} does not exist; create it with one `user ...` line per user")
    if tls_client_certificate is not None and tls is None:
        raise ValueError("tls_client_certificate needs tls: client certificates are checked only on the TLS port")

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = free_port()

    config_path = workdir / "redis.conf"
    config = _redis_config(workdir, port, notify_keyspace_events, password, acl_file, tls, extra_config,
                           tls_auth_clients=tls_client_certificate is not None)
    _write_redis_config(config_path, config)

    server = RedisServer(workdir=workdir, port=port, config_path=config_path, password=password, tls=tls,
                         client_certificate=tls_client_certificate)
    server.start(timeout_s=timeout_s)
    return server


# ---------------------------------------------------------------------------
# A cluster of primaries
# ---------------------------------------------------------------------------

@dataclass
class RedisCluster:
    """Handle of a local Redis Cluster of primaries without replicas; start_redis_cluster() creates it."""

    nodes: list[RedisServer]
    password: str | None = None

    @property
    def startup_nodes(self) -> list[redis.cluster.ClusterNode]:
        return [redis.cluster.ClusterNode(node.host, node.port) for node in self.nodes]

    def client(self, **kwargs) -> redis.cluster.RedisCluster:
        """Return a RedisCluster client; keyword arguments override the defaults (startup nodes, password)."""
        options: dict = {"startup_nodes": self.startup_nodes, "password": self.password}
        options.update(kwargs)
        return redis.cluster.RedisCluster(**options)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_is_ok(nodes: Sequence[RedisServer]) -> bool:
    """Tell whether every node reports cluster_state:ok and knows every other node."""
    for node in nodes:
        client = node.client(socket_timeout=2.0)
        try:
            info = client.cluster("INFO")
            if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) < len(nodes):
                return False
        finally:
            client.close()
    return True


def start_redis_cluster(workdir: Path, primaries: int = 3,
                        notify_keyspace_events: str | None = DEFAULT_NOTIFY_KEYSPACE_EVENTS,
                        password: str | None = None, extra_config: Mapping[str, str] | None = None,
                        timeout_s: float = CLUSTER_READY_TIMEOUT_S) -> RedisCluster:
    """Start ``primaries`` cluster-mode servers in workdir/node-<i>, assign all 16384 slots, wait for cluster_state:ok.

    Slots are spread evenly by `redis-cli --cluster create --cluster-replicas 0`.
    Each node also gets a free cluster bus port (`cluster-port`) instead of the
    default port + 10000, which may be taken or above 65535.
    """
    if primaries < MINIMUM_CLUSTER_PRIMARIES:
        raise ValueError(f"primaries must be at least {MINIMUM_CLUSTER_PRIMARIES} "
                         f"(redis-cli --cluster create needs 3 masters), got {primaries}")

    workdir = Path(workdir).resolve()
    ports: set[int] = set()
    while len(ports) < 2 * primaries:
        ports.add(free_port())
    port_list = sorted(ports)
    client_ports, bus_ports = port_list[:primaries], port_list[primaries:]

    nodes: list[RedisServer] = []
    try:
        for index, (client_port, bus_port) in enumerate(zip(client_ports, bus_ports)):
            node_dir = workdir / f"node-{index}"
            cluster_config = {
                "cluster-enabled": "yes",
                "cluster-config-file": str(node_dir / "data" / "nodes.conf"),
                "cluster-port": str(bus_port),
                "cluster-node-timeout": str(CLUSTER_NODE_TIMEOUT_MS),
                **(extra_config or {}),
            }
            nodes.append(start_redis(node_dir, port=client_port, notify_keyspace_events=notify_keyspace_events,
                                     password=password, extra_config=cluster_config))

        # REDISCLI_AUTH keeps the password off the command line and avoids redis-cli's warning about -a.
        cli_env = {"REDISCLI_AUTH": password} if password is not None else None
        run_checked(
            [redis_cli_executable(), "--cluster", "create",
             *[f"{node.host}:{node.port}" for node in nodes],
             "--cluster-replicas", "0", "--cluster-yes"],
            "redis-cli --cluster create",
            env=cli_env,
            timeout_s=timeout_s,
        )

        deadline = time.monotonic() + timeout_s
        while not _cluster_is_ok(nodes):
            if time.monotonic() >= deadline:
                raise StackError(
                    f"Redis cluster on ports {client_ports} did not reach cluster_state:ok within {timeout_s:.0f} s; "
                    f"see the redis.log files under {workdir}"
                )
            time.sleep(0.2)
    except BaseException:
        for node in nodes:
            node.stop()
        raise

    log.info("Redis cluster ready with %d primaries on ports %s", primaries, client_ports)
    return RedisCluster(nodes=nodes, password=password)
