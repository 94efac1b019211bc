"""A single-node Apache Kafka 4.x (KRaft, combined broker and controller) for tests, the demo and benchmarks.

The broker jars come from Maven Central through mvn (devstack/maven/kafka-pom.xml)
into cache_dir()/kafka-<version>/libs, and the broker runs on Java 17+ as
``java -cp libs/* kafka.Kafka server.properties``: no release tarball and no
Docker. Everything listens on 127.0.0.1.

Layout of a node's work directory:

    server.properties   written on every start, from the ports in ports.json
    ports.json          broker and controller ports, reused by a later start
    data/               log.dirs (topic partitions and the KRaft metadata log)
    logs/               server.log, controller.log, state-change.log
    kafka.out           the JVM's standard output and error (WARN and above)

The first start formats data/ with kafka.tools.StorageTool --standalone. A later
start_kafka() on the same directory keeps the data (topics, records, committed
offsets) and reuses the stored ports while they are free, so clients can keep
their bootstrap address.

With ``sasl_ssl`` the node also gets a SASL_SSL listener: TLS with a
certificate from a private CA (a PEM keystore, ``ssl.keystore.type=PEM``) and
SCRAM users written into the metadata log at format time (``--add-scram``).
The PLAINTEXT client listener, the controller listener and inter-broker
traffic stay plain on 127.0.0.1, so the SCRAM credentials never gate the
node's own metadata traffic. Its files are in tls/ of the work directory.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from base64 import urlsafe_b64encode
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic, ScramCredentialInfo, ScramMechanism, \
    UserScramCredentialUpsertion

from devstack.process import LOOPBACK, ManagedProcess, StackError, cache_dir, free_port, port_is_open, run_checked
from devstack.tls import TlsFiles, make_tls_files, write_pem_keystore

log = logging.getLogger(__name__)

# 4.2.2 is the newest patch of the 4.2 line on Maven Central. Like 4.0 and 4.1
# it still resolves slf4j-api 1.7.36, so the SLF4J 1 binding of Log4j 2 applies.
KAFKA_VERSION = "4.2.2"
# The log4j-core version that kafka-server 4.2.2 depends on. The SLF4J binding must match it.
LOG4J_VERSION = "2.25.5"
MINIMUM_JAVA_MAJOR = 17

HEAP_OPTIONS = ("-Xms512m", "-Xmx512m")
# The JIT and GC options of Kafka's kafka-run-class.sh (4.2).
PERFORMANCE_OPTIONS = (
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
)

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
FORMAT_TIMEOUT_S = 120.0
DOWNLOAD_TIMEOUT_S = 1800.0

_PACKAGE_DIR = Path(__file__).resolve().parent
POM_PATH = _PACKAGE_DIR / "maven" / "kafka-pom.xml"
SERVER_LOG_CONFIG_PATH = _PACKAGE_DIR / "conf" / "kafka-log4j2.xml"
TOOLS_LOG_CONFIG_PATH = _PACKAGE_DIR / "conf" / "kafka-tools-log4j2.xml"

NODE_ID = 1

# Keys that define the node's identity and storage layout. A different value
# would no longer match the formatted data directory, so callers cannot override them.
MANAGED_PROPERTIES = frozenset({
    "process.roles",
    "node.id",
    "log.dir",
    "log.dirs",
    "metadata.log.dir",
    "controller.listener.names",
    "controller.quorum.bootstrap.servers",
    "controller.quorum.voters",
})


# ---------------------------------------------------------------------------
# Java and the jar cache
# ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def java_executable() -> str:
    """Return the java launcher to run Kafka with: $JAVA_HOME/bin/java if JAVA_HOME is set, else java on PATH.

    Raises StackError when it is missing or older than Java 17, which Kafka 4.x brokers require.
    """
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        if not java.is_file():
            raise StackError(f"JAVA_HOME={java_home} has no bin/java; point JAVA_HOME at a Java 17+ JDK or unset it")
        executable = str(java)
    else:
        found = shutil.which("java")
        if found is None:
            raise StackError("java not found on PATH; install Java 17+ (apt-get install -y openjdk-17-jre-headless)")
        executable = found

    # `java -version` prints to standard error.
    result = subprocess.run([executable, "-version"], capture_output=True, text=True, timeout=60, check=False)
    version_output = result.stderr + result.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        raise StackError(f"cannot read the Java version from `{executable} -version`: {version_output!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    if major < MINIMUM_JAVA_MAJOR:
        raise StackError(
            f"{executable} is Java {major}; Kafka {KAFKA_VERSION} brokers need Java {MINIMUM_JAVA_MAJOR}+. "
            "Set JAVA_HOME to a newer JDK."
        )
    return executable


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``, so parallel test processes download the jars only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def maven_repository() -> Path:
    """Return the local Maven repository that devstack downloads into (kept out of ~/.m2)."""
    return cache_dir() / "maven-repo"


def ensure_kafka_jars(kafka_version: str = KAFKA_VERSION, log4j_version: str = LOG4J_VERSION) -> Path:
    """Download the broker jars once and return their folder, cache_dir()/kafka-<version>/libs.

    A marker file written after a complete download makes later calls return at
    once without running mvn.
    """
    version_dir = cache_dir() / f"kafka-{kafka_version}"
    libs_dir = version_dir / "libs"
    marker = version_dir / "libs.complete"
    if marker.is_file() and libs_dir.is_dir():
        return libs_dir

    with _file_lock(version_dir / "download.lock"):
        # Another process may have finished the download while this one waited for the lock.
        if marker.is_file() and libs_dir.is_dir():
            return libs_dir
        _download_jars(kafka_version, log4j_version, version_dir, libs_dir)
        marker.write_text(f"kafka {kafka_version}, log4j {log4j_version}\n")
    return libs_dir


def _download_jars(kafka_version: str, log4j_version: str, version_dir: Path, libs_dir: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("mvn not found on PATH; it fetches the Kafka jars from Maven Central "
                         "(apt-get install -y maven)")

    staging_dir = version_dir / "libs.partial"
    shutil.rmtree(staging_dir, ignore_errors=True)
    print(
        f"Fetching Apache Kafka {kafka_version} (org.apache.kafka:kafka_2.13 with its runtime dependencies) "
        f"and Log4j {log4j_version} from Maven Central into {libs_dir} ...",
        flush=True,
    )
    started = time.monotonic()
    run_checked(
        [
            mvn, "-B", "-q", "-Dstyle.color=never",
            "-f", str(POM_PATH),
            f"-Dkafka.version={kafka_version}",
            f"-Dlog4j.version={log4j_version}",
            f"-Dmaven.repo.local={maven_repository()}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging_dir}",
            "-DincludeScope=runtime",
        ],
        f"mvn download of Kafka {kafka_version} jars",
        timeout_s=DOWNLOAD_TIMEOUT_S,
    )

    jars = sorted(staging_dir.glob("*.jar"))
    required = (f"kafka_2.13-{kafka_version}.jar", f"log4j-slf4j-impl-{log4j_version}.jar")
    names = {jar.name for jar in jars}
    missing = [name for name in required if name not in names]
    if missing:
        raise StackError(f"mvn finished but {staging_dir} lacks {', '.join(missing)}; check {POM_PATH}")

    size_mb = sum(jar.stat().st_size for jar in jars) / 1e6
    shutil.rmtree(libs_dir, ignore_errors=True)
    staging_dir.rename(libs_dir)
    print(
        f"Fetched {len(jars)} jars ({size_mb:.1f} MB) for Kafka {kafka_version} "
        f"in {time.monotonic() - started:.1f} s; Maven's own downloads stay in {maven_repository()}",
        flush=True,
    )


# ---------------------------------------------------------------------------
# Configuration and storage format
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class KafkaPorts:
    broker: int
    controller: int
    sasl_ssl: int | None = None


SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
# The iteration count kafka-storage --add-scram uses when none is given.
SCRAM_ITERATIONS = 4096
# Characters the --add-scram parser of kafka-storage treats as syntax.
_SCRAM_SYNTAX_CHARACTERS = frozenset(',[]="\\')


@dataclass(frozen=True)
class SaslSslSettings:
    """An extra SASL_SSL listener on 127.0.0.1: SCRAM authentication inside TLS.

    ``users`` maps SCRAM user names to passwords. They are created when the
    storage is formatted, and set through the Admin API when a formatted node
    starts again. ``tls`` contains the CA and the server certificate, and None
    makes a new CA in workdir/tls on every start. ``port`` None picks a free
    port or reuses the stored one.
    """

    users: Mapping[str, str]
    mechanism: str = "SCRAM-SHA-512"
    tls: TlsFiles | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        if self.mechanism not in SCRAM_MECHANISMS:
            raise ValueError(f"mechanism {self.mechanism!r} is not supported; use one of {', '.join(SCRAM_MECHANISMS)}")
        if not self.users:
            raise ValueError("users must name at least one SCRAM user, e.g. {'echoseen': 'a-password'}")
        for name, password in self.users.items():
            for label, value in (("user name", name), ("password", password)):
                if not value or any(character.isspace() or character in _SCRAM_SYNTAX_CHARACTERS
                                    for character in value):
                    # The value itself stays out of the message because it may be a password.
                    raise ValueError(f"the SCRAM {label} of user #{list(self.users).index(name) + 1} is empty or "
                                     "contains whitespace or one of , [ ] = \" \\, which kafka-storage --add-scram "
                                     "reads as syntax")


def _new_cluster_id() -> str:
    """Return a random cluster id in Kafka's form: 16 random bytes, base64url without padding (22 characters)."""
    while True:
        cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        # Kafka's own Uuid.randomUuid() skips ids that start with '-', because
        # command-line parsers read them as options.
        if not cluster_id.startswith("-"):
            return cluster_id


def _server_properties(workdir: Path, ports: KafkaPorts,
                       extra_properties: Mapping[str, str] | None,
                       sasl_ssl: SaslSslSettings | None = None, keystore_path: Path | None = None) -> dict[str, str]:
    broker = f"{LOOPBACK}:{ports.broker}"
    controller = f"{LOOPBACK}:{ports.controller}"
    listeners = f"PLAINTEXT://{broker},CONTROLLER://{controller}"
    if sasl_ssl is not None:
        listeners += f",SASL_SSL://{LOOPBACK}:{ports.sasl_ssl}"
    properties = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.bootstrap.servers": controller,
        "listeners": listeners,
        "advertised.listeners": listeners,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": (
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL"
        ),
        "log.dirs": str(workdir / "data"),
        "num.partitions": "1",
        # Internal topics default to replication factor 3, which one node cannot
        # satisfy: consumer groups, transactions and share groups would fail.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # The default 50 partitions of each internal topic make the first
        # consumer group or transaction wait for 50 partition leaders.
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.num.partitions": "1",
        # Topics are created on purpose (create_topic), so a typo fails instead of making a new topic.
        "auto.create.topics.enable": "false",
        # Tests start a consumer and expect its assignment at once, not after the default 3 s.
        "group.initial.rebalance.delay.ms": "0",
        # After a SIGKILL the restarted node cannot register its broker until the
        # old broker session expires (DUPLICATE_BROKER_REGISTRATION), 9 s by
        # default. Six heartbeats per session leave room for heartbeats delayed on a busy machine.
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "6000",
    }
    if sasl_ssl is not None:
        properties.update(_sasl_ssl_properties(sasl_ssl, keystore_path))
    for key, value in (extra_properties or {}).items():
        if key in MANAGED_PROPERTIES:
            raise ValueError(
                f"extra_properties may not set {key!r}={value!r}: devstack.kafka manages it "
                "to match the formatted data directory"
            )
        properties[key] = str(value)
    return properties


def _sasl_ssl_properties(sasl_ssl: SaslSslSettings, keystore_path: Path | None) -> dict[str, str]:
    """Return the settings of the SASL_SSL listener; they only apply to it (listener.name.sasl_ssl.*)."""
    if keystore_path is None:
        raise ValueError("a SASL_SSL listener needs the path of its PEM keystore")
    prefix = "listener.name.sasl_ssl."
    mechanism = sasl_ssl.mechanism.lower()
    return {
        f"{prefix}sasl.enabled.mechanisms": sasl_ssl.mechanism,
        # The server side of SCRAM needs no options: it checks clients against the credentials in the metadata log.
        f"{prefix}{mechanism}.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        # Kafka 2.7 and later read a PEM file with the private key followed by the certificate chain.
        f"{prefix}ssl.keystore.type": "PEM",
        f"{prefix}ssl.keystore.location": str(keystore_path),
        f"{prefix}ssl.client.auth": "none",
    }


def _write_properties(path: Path, properties: Mapping[str, str]) -> None:
    lines = ["# Written by devstack.kafka on every start; edit extra_properties instead."]
    lines += [f"{key}={value}" for key, value in properties.items()]
    path.write_text("\n".join(lines) + "\n")


def _format_storage(libs_dir: Path, properties_path: Path, sasl_ssl: SaslSslSettings | None = None) -> None:
    cluster_id = _new_cluster_id()
    log.info("formatting Kafka storage for %s with cluster id %s", properties_path, cluster_id)
    scram_options: list[str] = []
    if sasl_ssl is not None:
        for name, password in sasl_ssl.users.items():
            scram_options += ["--add-scram", f"{sasl_ssl.mechanism}=[name={name},password={password}]"]
        log.info("adding %s users %s at format time", sasl_ssl.mechanism, ", ".join(sasl_ssl.users))
    # NOTE: --add-scram puts the passwords on the tool's command line, where other local users can see
    # them while it runs. That is acceptable for throwaway test credentials only.
    run_checked(
        [
            java_executable(),
            # A short-lived tool: a small heap and the client JIT start it faster.
            "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
            f"-Dlog4j2.configurationFile={TOOLS_LOG_CONFIG_PATH}",
            "-cp", f"{libs_dir}/*",
            "kafka.tools.StorageTool", "format",
            "--config", str(properties_path),
            "--cluster-id", cluster_id,
            "--standalone",
            *scram_options,
        ],
        "Kafka storage format (kafka.tools.StorageTool)",
        timeout_s=FORMAT_TIMEOUT_S,
    )


def _is_formatted(workdir: Path) -> bool:
    return (workdir / "data" / "meta.properties").is_file()


def _read_ports(workdir: Path) -> KafkaPorts | None:
    try:
        stored = json.loads((workdir / "ports.json").read_text())
        sasl_ssl = stored.get("sasl_ssl")
        return KafkaPorts(broker=int(stored["broker"]), controller=int(stored["controller"]),
                          sasl_ssl=int(sasl_ssl) if sasl_ssl is not None else None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_ports(workdir: Path, ports: KafkaPorts) -> None:
    stored = {"broker": ports.broker, "controller": ports.controller}
    if ports.sasl_ssl is not None:
        stored["sasl_ssl"] = ports.sasl_ssl
    (workdir / "ports.json").write_text(json.dumps(stored) + "\n")


def _choose_ports(workdir: Path, port: int | None, sasl_ssl: SaslSslSettings | None = None) -> KafkaPorts:
    """Pick the broker, controller and SASL_SSL ports, reusing the ones stored in ``workdir`` while they are free."""
    stored = _read_ports(workdir)

    def stored_or_free(stored_port: int | None) -> int:
        if stored_port is not None and not port_is_open(stored_port):
            return stored_port
        return free_port()

    controller_port = stored_or_free(stored.controller if stored else None)
    if port is None:
        broker_port = stored_or_free(stored.broker if stored else None)
    elif port_is_open(port):
        raise StackError(f"Kafka broker port {port} on {LOOPBACK} is in use; pass another port or None")
    else:
        broker_port = port

    while broker_port == controller_port:
        controller_port = free_port()

    sasl_ssl_port = None
    if sasl_ssl is not None:
        if sasl_ssl.port is None:
            sasl_ssl_port = stored_or_free(stored.sasl_ssl if stored else None)
        elif port_is_open(sasl_ssl.port):
            raise StackError(f"Kafka SASL_SSL port {sasl_ssl.port} on {LOOPBACK} is in use; pass another port or None")
        else:
            sasl_ssl_port = sasl_ssl.port
        while sasl_ssl_port in (broker_port, controller_port):
            sasl_ssl_port = free_port()
    return KafkaPorts(broker=broker_port, controller=controller_port, sasl_ssl=sasl_ssl_port)


# ---------------------------------------------------------------------------
# The running node
# ---------------------------------------------------------------------------

def _quiet_admin(bootstrap: str) -> AdminClient:
    # The readiness probe fails by design until the broker listens, so librdkafka's
    # connection-refused log lines carry no information here.
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000, "log_level": 0})


@dataclass
class KafkaServer:
    """Handle of one local Kafka node; start_kafka() creates and starts it."""

    workdir: Path
    ports: KafkaPorts
    libs_dir: Path
    properties_path: Path
    process: ManagedProcess | None = None
    last_startup_s: float | None = field(default=None, repr=False)
    # The SASL_SSL listener's settings, with ``tls`` filled in; None without that listener.
    sasl_ssl: SaslSslSettings | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        """The PLAINTEXT listener, which needs no credentials."""
        return f"{LOOPBACK}:{self.ports.broker}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """The SASL_SSL listener; StackError when the node has none."""
        if self.sasl_ssl is None or self.ports.sasl_ssl is None:
            raise StackError(f"Kafka at {self.bootstrap} has no SASL_SSL listener; start it with sasl_ssl=...")
        return f"{LOOPBACK}:{self.ports.sasl_ssl}"

    def sasl_ssl_client_settings(self, username: str, password: str | None = None) -> dict[str, str]:
        """Return librdkafka settings for the SASL_SSL listener as ``username``.

        ``password`` defaults to the user's password from the settings. The
        certificate is checked against the private CA, host name included.
        """
        bootstrap = self.sasl_ssl_bootstrap
        if username not in self.sasl_ssl.users and password is None:
            raise StackError(f"no SCRAM user {username!r} on Kafka at {bootstrap}; pass a password or add the user")
        return {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": self.sasl_ssl.mechanism,
            "sasl.username": username,
            "sasl.password": password if password is not None else self.sasl_ssl.users[username],
            "ssl.ca.location": str(self.sasl_ssl.tls.ca_cert_path),
        }

    @property
    def log_path(self) -> Path:
        return self.workdir / "kafka.out"

    @property
    def server_log_path(self) -> Path:
        return self.workdir / "logs" / "server.log"

    def is_running(self) -> bool:
        return self.process is not None and self.process.is_running()

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Start the JVM on the existing properties and data, and wait until it serves metadata.

        Returns the seconds from launching the JVM to the first metadata response.
        """
        if self.is_running():
            raise StackError(f"Kafka at {self.bootstrap} is already running (pid {self.process.pid})")
        for port in (self.ports.broker, self.ports.controller):
            if port_is_open(port):
                raise StackError(
                    f"port {port} of Kafka in {self.workdir} is in use by another process; "
                    "stop it or start Kafka in a new work directory"
                )

        logs_dir = self.workdir / "logs"
        logs_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            java_executable(),
            *HEAP_OPTIONS,
            *PERFORMANCE_OPTIONS,
            f"-Dlog4j2.configurationFile={SERVER_LOG_CONFIG_PATH}",
            f"-Dkafka.logs.dir={logs_dir}",
            "-cp", f"{self.libs_dir}/*",
            "kafka.Kafka", str(self.properties_path),
        ]
        self.process = ManagedProcess(
            name=f"kafka-{self.ports.broker}", argv=argv, log_path=self.log_path, cwd=self.workdir,
        ).start()

        admin = _quiet_admin(self.bootstrap)

        def serves_metadata() -> bool:
            if not port_is_open(self.ports.broker):
                return False
            if self.ports.sasl_ssl is not None and not port_is_open(self.ports.sasl_ssl):
                return False
            return len(admin.list_topics(timeout=2).brokers) > 0

        try:
            self.last_startup_s = self.process.wait_until(serves_metadata, timeout_s, "serving metadata")
        except StackError:
            self.process.stop(timeout_s=5)
            raise
        log.info("Kafka %s ready at %s%s in %.1f s (pid %d, server log %s)",
                 KAFKA_VERSION, self.bootstrap,
                 f" and SASL_SSL {LOOPBACK}:{self.ports.sasl_ssl}" if self.ports.sasl_ssl is not None else "",
                 self.last_startup_s, self.process.pid, self.server_log_path)
        return self.last_startup_s

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop with SIGTERM (a controlled shutdown that flushes the logs), SIGKILL after ``timeout_s``."""
        if self.process is not None:
            self.process.stop(timeout_s=timeout_s)

    def kill(self) -> None:
        """Kill the JVM with SIGKILL, as a crash would: no controlled shutdown, the next start recovers the logs."""
        if self.process is None:
            return
        self.process.signal(signal.SIGKILL)
        if self.process.popen is not None:
            self.process.popen.wait(timeout=30)
        # Reaps the handle and removes it from the stop-at-exit list.
        self.process.stop(timeout_s=1)

    def restart(self, downtime_s: float = 0.0, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Stop, stay down for ``downtime_s``, then start on the same ports and data.

        Returns the seconds the new JVM took to serve metadata.
        """
        self.stop()
        if downtime_s > 0:
            log.info("Kafka at %s stays down for %.1f s", self.bootstrap, downtime_s)
            time.sleep(downtime_s)
        return self.start(timeout_s=timeout_s)


def start_kafka(workdir: Path, port: int | None = None,
                extra_properties: Mapping[str, str] | None = None,
                timeout_s: float = READY_TIMEOUT_S, *,
                sasl_ssl: SaslSslSettings | None = None) -> KafkaServer:
    """Start a combined broker and controller node in ``workdir`` and wait until it serves metadata.

    ``port`` is the client (PLAINTEXT) port; None picks a free one, or reuses the
    port stored in ``workdir`` from an earlier start if it is free. The first start
    formats ``workdir/data``; later starts reuse it with its topics and offsets.
    ``extra_properties`` override the defaults of server.properties, except the
    keys in MANAGED_PROPERTIES. ``sasl_ssl`` adds a SASL_SSL listener with SCRAM users.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    libs_dir = ensure_kafka_jars()

    keystore_path = None
    if sasl_ssl is not None:
        if sasl_ssl.tls is None:
            sasl_ssl = dataclasses.replace(sasl_ssl, tls=make_tls_files(workdir / "tls"))
        keystore_path = write_pem_keystore(sasl_ssl.tls, workdir / "tls" / "kafka-keystore.pem")

    ports = _choose_ports(workdir, port, sasl_ssl)
    properties = _server_properties(workdir, ports, extra_properties, sasl_ssl, keystore_path)
    properties_path = workdir / "server.properties"
    _write_properties(properties_path, properties)
    _write_ports(workdir, ports)

    formatted_before = _is_formatted(workdir)
    if not formatted_before:
        _format_storage(libs_dir, properties_path, sasl_ssl)

    server = KafkaServer(workdir=workdir, ports=ports, libs_dir=libs_dir, properties_path=properties_path,
                         sasl_ssl=sasl_ssl)
    server.start(timeout_s=timeout_s)
    if sasl_ssl is not None and formatted_before:
        # --add-scram only works on an unformatted directory; later starts set the passwords through the Admin API.
        upsert_scram_users(server.bootstrap, sasl_ssl)
    return server


def upsert_scram_users(bootstrap: str, sasl_ssl: SaslSslSettings, timeout_s: float = 30.0) -> None:
    """Create or update the SCRAM credentials of ``sasl_ssl.users`` with the Admin API (AlterUserScramCredentials)."""
    mechanism = ScramMechanism.SCRAM_SHA_512 if sasl_ssl.mechanism == "SCRAM-SHA-512" else ScramMechanism.SCRAM_SHA_256
    admin = AdminClient({"bootstrap.servers": bootstrap})
    upsertions = [
        UserScramCredentialUpsertion(name, ScramCredentialInfo(mechanism, SCRAM_ITERATIONS), password.encode())
        for name, password in sasl_ssl.users.items()
    ]
    futures = admin.alter_user_scram_credentials(upsertions, request_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            raise StackError(f"setting the {sasl_ssl.mechanism} credentials of user {name!r} on {bootstrap} "
                             f"failed: {exc}") from exc
    log.info("set %s credentials of %s on %s", sasl_ssl.mechanism, ", ".join(sasl_ssl.users), bootstrap)


# ---------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------

def create_topic(bootstrap: str, name: str, partitions: int, config: Mapping[str, str] | None = None,
                 *, replication_factor: int = 1, exist_ok: bool = False, timeout_s: float = 30.0) -> None:
    """Create a topic with the Admin API and wait until every partition has a leader.

    ``config`` contains topic configs such as {"cleanup.policy": "compact"}. With
    ``exist_ok`` an existing topic is accepted as it is, without checking its
    partition count or configs.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(name, num_partitions=partitions, replication_factor=replication_factor,
                     config={key: str(value) for key, value in (config or {}).items()})
    futures = admin.create_topics([topic], request_timeout=timeout_s, operation_timeout=timeout_s)
    try:
        futures[name].result(timeout=timeout_s)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        already_exists = isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS
        if not (exist_ok and already_exists):
            raise StackError(
                f"creating topic {name!r} with {partitions} partitions on {bootstrap} failed: {exc}"
            ) from exc

    # CreateTopics returns once the controller accepted the topic, but a producer
    # that starts right away needs the partition leaders in the broker's metadata.
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(topic=name, timeout=max(1.0, deadline - time.monotonic()))
        described = metadata.topics.get(name)
        if (described is not None and described.error is None and described.partitions
                and all(p.leader >= 0 and p.error is None for p in described.partitions.values())):
            return
        if time.monotonic() >= deadline:
            raise StackError(f"topic {name!r} on {bootstrap} has no leader for every partition after {timeout_s:.0f} s")
        time.sleep(0.1)
