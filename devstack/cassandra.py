"""One Apache Cassandra 5.0 node on the loopback address, run from Maven Central jars.

No release tarball is used. ``ensure_cassandra_jars`` has Maven copy
``org.apache.cassandra:cassandra-all`` and its runtime dependencies into one
flat ``lib/`` folder. ``start_cassandra`` then launches
``org.apache.cassandra.service.CassandraDaemon`` with Java 17 the way the
release's ``bin/cassandra`` and ``conf/cassandra-env.sh`` would, minus what a
single test node does not need (see ``_jvm_options``). Each node writes its
``cassandra.yaml`` and ``logback.xml`` into its own work folder and binds to
free ports, so several nodes can run on one machine without seeing each other.

Readiness means that the Python driver can run
``SELECT release_version, listen_port FROM system.local`` over the native
protocol and gets back this node's storage port, not another node's.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from devstack.process import (
    LOOPBACK,
    ManagedProcess,
    StackError,
    cache_dir,
    free_port,
    port_is_open,
    run_checked,
)

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, Session

log = logging.getLogger(__name__)

CASSANDRA_VERSION = "5.0.9"
MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"
DATACENTER = "datacenter1"  # the data center name SimpleSnitch gives the node
CLUSTER_NAME = "echoseen-devstack"
# Cassandra 5.0 supports Java 11 and 17 only.
SUPPORTED_JAVA_MAJORS = (17, 11)

_PACKAGE_DIR = Path(__file__).resolve().parent
_POM_PATH = _PACKAGE_DIR / "maven" / "cassandra-pom.xml"
_YAML_TEMPLATE_PATH = _PACKAGE_DIR / "conf" / "cassandra-node.yaml"
_LOGBACK_PATH = _PACKAGE_DIR / "conf" / "cassandra-logback.xml"
_TOOLS_LOGBACK_PATH = _PACKAGE_DIR / "conf" / "cassandra-tools-logback.xml"
_COMPLETE_MARKER = ".complete"
_CQL_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")

# Module flags from conf/jvm17-server.options of Cassandra 5.0: the JPMS
# exports and opens Cassandra needs on Java 17, and Netty's allocator settings.
_JAVA17_MODULE_OPTIONS = (
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports", "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports", "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports", "java.management/com.sun.jmx.remote.security=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports", "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports", "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports", "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens", "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens", "java.base/java.io=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "--add-opens", "java.base/java.nio=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
)

# bin/cassandra.in.sh adds these when the Java installation is a JDK (has javac),
# so that Cassandra's in-process tools can attach to the JVM and compile code.
_JDK_ONLY_MODULE_OPTIONS = (
    "--add-exports", "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-exports", "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-opens", "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
)

# GC settings of conf/jvm17-server.options (G1).
_G1_OPTIONS = (
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:G1HeapRegionSize=16m",
    "-XX:G1RSetUpdatingPauseTimePercent=5",
    "-XX:MaxGCPauseMillis=300",
    "-XX:InitiatingHeapOccupancyPercent=70",
)


@dataclass(frozen=True)
class CassandraNodeConfig:
    """Everything that decides how one node is launched; kept so a restart reuses it."""

    workdir: Path
    version: str
    java_path: Path
    lib_dir: Path
    native_port: int
    storage_port: int
    jmx_port: int | None
    heap_size: str = "1G"
    cluster_name: str = CLUSTER_NAME
    unsafe_system: bool = False
    commitlog_sync_period_ms: int = 10000

    @property
    def conf_dir(self) -> Path:
        return self.workdir / "conf"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"


@dataclass
class CassandraServer:
    """A running (or stopped) Cassandra node started by ``start_cassandra``."""

    config: CassandraNodeConfig
    process: ManagedProcess
    startup_s: float
    host: str = LOOPBACK
    startup_history_s: list[float] = field(default_factory=list)

    @property
    def native_port(self) -> int:
        return self.config.native_port

    @property
    def storage_port(self) -> int:
        return self.config.storage_port

    @property
    def jmx_port(self) -> int | None:
        return self.config.jmx_port

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def workdir(self) -> Path:
        return self.config.workdir

    @property
    def system_log(self) -> Path:
        return self.config.log_dir / "system.log"

    def is_running(self) -> bool:
        return self.process.is_running()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop with SIGTERM; Cassandra's shutdown hook drains and flushes before it exits."""
        self.process.stop(timeout_s=timeout_s)

    def kill(self) -> None:
        """Kill with SIGKILL, as a crash would. The next start replays the commit log up to its last sync."""
        self.process.signal(signal.SIGKILL)
        if self.process.popen is not None:
            self.process.popen.wait(timeout=30)
        self.process.stop()

    def restart(self, timeout_s: float = 180.0) -> float:
        """Stop the node if it runs, start it again on the same data and ports; return the start seconds."""
        if self.is_running():
            self.stop()
        self.process, self.startup_s = _launch(self.config, timeout_s)
        self.startup_history_s.append(self.startup_s)
        return self.startup_s


def find_java() -> Path:
    """Return a ``java`` executable of a version Cassandra 5.0 runs on, preferring 17.

    ECHOSEEN_CASSANDRA_JAVA names one explicitly; otherwise JAVA_HOME, the
    ``java`` on PATH and the JVMs under /usr/lib/jvm are tried in that order.
    """
    explicit = os.environ.get("ECHOSEEN_CASSANDRA_JAVA")
    if explicit:
        path = Path(explicit)
        major = _java_major(path)
        if major not in SUPPORTED_JAVA_MAJORS:
            raise StackError(
                f"ECHOSEEN_CASSANDRA_JAVA={explicit} is Java {major}; Cassandra 5.0 needs Java 17 or 11"
            )
        return path

    candidates: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    candidates.extend(sorted(Path("/usr/lib/jvm").glob("*/bin/java")))

    found: dict[int, Path] = {}
    for candidate in candidates:
        major = _java_major(candidate)
        if major in SUPPORTED_JAVA_MAJORS and major not in found:
            found[major] = candidate
    for major in SUPPORTED_JAVA_MAJORS:
        if major in found:
            return found[major]
    raise StackError(
        "no Java 17 or 11 found (tried JAVA_HOME, java on PATH, /usr/lib/jvm/*); "
        "install openjdk-17-jdk-headless or set ECHOSEEN_CASSANDRA_JAVA to a Java 17 java binary"
    )


def _java_major(java: Path) -> int | None:
    if not java.exists():
        return None
    try:
        result = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr)
    if not match:
        return None
    major = int(match.group(1))
    # Java 8 and older report "1.8"; the major is then the second number.
    if major == 1 and match.group(2):
        major = int(match.group(2))
    return major


def cassandra_home(version: str = CASSANDRA_VERSION) -> Path:
    return cache_dir() / f"cassandra-{version}"


def ensure_cassandra_jars(version: str = CASSANDRA_VERSION) -> Path:
    """Return the lib folder holding cassandra-all and its runtime jars, fetching them once.

    Maven resolves them from Maven Central into a temporary local repository
    inside the cache. Only the flat lib folder is kept, and later starts fetch
    nothing. A file lock keeps two test processes from fetching at once.
    """
    home = cassandra_home(version)
    lib_dir = home / "lib"
    if (lib_dir / _COMPLETE_MARKER).exists():
        return lib_dir

    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".fetch.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if (lib_dir / _COMPLETE_MARKER).exists():
            return lib_dir
        _fetch_jars(version, home, lib_dir)
    return lib_dir


def _fetch_jars(version: str, home: Path, lib_dir: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("mvn not found on PATH; install Maven (apt-get install maven) to fetch Cassandra's jars")

    repository = home / "m2-repository"
    staging = home / "lib.partial"
    shutil.rmtree(staging, ignore_errors=True)
    print(
        f"devstack: fetching org.apache.cassandra:cassandra-all:{version} and its runtime dependencies "
        f"from Maven Central into {lib_dir} (about 70 MB, once)",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    run_checked(
        [
            mvn, "-B", "-q",
            "-f", str(_POM_PATH),
            f"-Dcassandra.version={version}",
            f"-Dmaven.repo.local={repository}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ],
        what=f"fetching Cassandra {version} jars with Maven",
        timeout_s=1800,
    )

    if not (staging / f"cassandra-all-{version}.jar").exists():
        raise StackError(f"Maven finished but {staging} has no cassandra-all-{version}.jar; check {_POM_PATH}")
    (staging / _COMPLETE_MARKER).write_text(version + "\n")
    shutil.rmtree(lib_dir, ignore_errors=True)
    staging.rename(lib_dir)
    # The local repository contains a second copy of every jar plus Maven's plugins.
    shutil.rmtree(repository, ignore_errors=True)

    jars = list(lib_dir.glob("*.jar"))
    size_mb = sum(jar.stat().st_size for jar in jars) / 1e6
    print(
        f"devstack: fetched {len(jars)} jars, {size_mb:.0f} MB, in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def jamm_jar(lib_dir: Path) -> Path:
    """Return the jamm jar that Cassandra loads as a Java agent to measure object sizes."""
    jars = sorted(lib_dir.glob("jamm-*.jar"))
    if not jars:
        raise StackError(f"no jamm-*.jar in {lib_dir}; delete {lib_dir.parent} to fetch the jars again")
    return jars[-1]


def start_cassandra(
    workdir: Path,
    *,
    version: str = CASSANDRA_VERSION,
    native_port: int | None = None,
    storage_port: int | None = None,
    jmx_port: int | None = 0,
    heap_size: str = "1G",
    unsafe_system: bool = False,
    commitlog_sync_period_ms: int = 10000,
    timeout_s: float = 180.0,
) -> CassandraServer:
    """Start one Cassandra node with its data under ``workdir`` and wait until it runs a CQL query.

    Ports default to free ones. ``jmx_port=0`` picks a free port for local
    JMX (so nodetool works), ``None`` turns JMX off. ``unsafe_system``
    (-Dcassandra.unsafesystem) skips the durable writes of system tables:
    schema changes get faster, but a node killed with SIGKILL then comes back
    without its schema and drops the data of the lost tables, so it is off by
    default. ``commitlog_sync_period_ms`` is the commit log's periodic sync
    interval (10 s, Cassandra's shipped value): a node killed with SIGKILL
    loses the writes it acknowledged during the last interval.
    An existing ``workdir`` is reused as it is, data included.
    """
    lib_dir = ensure_cassandra_jars(version)
    config = CassandraNodeConfig(
        workdir=Path(workdir).resolve(),
        version=version,
        java_path=find_java(),
        lib_dir=lib_dir,
        native_port=native_port or free_port(),
        storage_port=storage_port or free_port(),
        jmx_port=(free_port() if jmx_port == 0 else jmx_port),
        heap_size=heap_size,
        unsafe_system=unsafe_system,
        commitlog_sync_period_ms=commitlog_sync_period_ms,
    )
    process, startup_s = _launch(config, timeout_s)
    server = CassandraServer(config=config, process=process, startup_s=startup_s)
    server.startup_history_s.append(startup_s)
    return server


def _launch(config: CassandraNodeConfig, timeout_s: float) -> tuple[ManagedProcess, float]:
    ports = {"native transport": config.native_port, "storage": config.storage_port, "JMX": config.jmx_port}
    for purpose, port in ports.items():
        if port is not None and port_is_open(port):
            raise StackError(f"{purpose} port {port} on {LOOPBACK} is already in use; "
                             f"pass another port or stop the process that listens there")
    _write_node_files(config)
    argv = [str(config.java_path), *_jvm_options(config), "-cp", _classpath(config), *_system_properties(config), MAIN_CLASS]
    process = ManagedProcess(
        name=f"cassandra:{config.native_port}",
        argv=argv,
        log_path=config.log_dir / "cassandra.out",
        # cassandra-env.sh caps glibc's malloc arenas to keep native memory down.
        env={"MALLOC_ARENA_MAX": "4"},
        cwd=config.workdir,
    )
    started = time.monotonic()
    process.start()
    try:
        process.wait_until(lambda: port_is_open(config.native_port), timeout_s, "native transport port open")
        remaining_s = max(10.0, timeout_s - (time.monotonic() - started))
        process.wait_until(lambda: _serves_cql(config), remaining_s, "CQL query answered")
    except BaseException:
        process.stop()
        raise
    startup_s = time.monotonic() - started
    log.info(
        "Cassandra %s ready on %s:%d (storage port %d, JMX port %s) in %.1f s, data in %s",
        config.version, LOOPBACK, config.native_port, config.storage_port, config.jmx_port, startup_s,
        config.data_dir,
    )
    return process, startup_s


def _write_node_files(config: CassandraNodeConfig) -> None:
    for directory in (config.conf_dir / "triggers", config.data_dir, config.log_dir, config.workdir / "tmp"):
        directory.mkdir(parents=True, exist_ok=True)
    yaml_text = Template(_YAML_TEMPLATE_PATH.read_text()).substitute(
        cluster_name=config.cluster_name,
        storage_port=config.storage_port,
        native_port=config.native_port,
        data_dir=config.data_dir,
        commitlog_sync_period_ms=config.commitlog_sync_period_ms,
    )
    (config.conf_dir / "cassandra.yaml").write_text(yaml_text)
    shutil.copyfile(_LOGBACK_PATH, config.conf_dir / "logback.xml")


def _classpath(config: CassandraNodeConfig) -> str:
    # The conf folder comes first, as in bin/cassandra.in.sh; "lib/*" is Java's jar wildcard.
    return f"{config.conf_dir}{os.pathsep}{config.lib_dir}/*"


def _jvm_options(config: CassandraNodeConfig) -> list[str]:
    """Build the JVM options of bin/cassandra, cassandra-env.sh and jvm*-server.options for a test node.

    Left out on purpose: -XX:+AlwaysPreTouch, which would commit the whole
    heap at start for no gain in tests, the generated hotspot_compiler file
    and jemalloc preloading. The Sigar native library is missing too, because
    Maven Central has only the Sigar jar, so Cassandra logs that Sigar is
    not initialized.
    """
    options = [
        f"-Xms{config.heap_size}",
        f"-Xmx{config.heap_size}",
        *_G1_OPTIONS,
        # From conf/jvm-server.options.
        "-ea",
        "-da:net.openhft...",
        "-XX:+UseThreadPriorities",
        "-XX:+HeapDumpOnOutOfMemoryError",
        f"-XX:HeapDumpPath={config.workdir}",
        "-Xss256k",
        "-XX:+UseTLAB",
        "-XX:+ResizeTLAB",
        "-XX:+UseNUMA",
        "-XX:+PerfDisableSharedMem",
        "-Djava.net.preferIPv4Stack=true",
        "-Dchronicle.analytics.disable=true",
        *_JAVA17_MODULE_OPTIONS,
        # From cassandra-env.sh and bin/cassandra.
        f"-Xlog:gc=info:file={config.log_dir}/gc.log:time,uptime:filecount=2,filesize=10m",
        f"-javaagent:{jamm_jar(config.lib_dir)}",
        "-XX:OnOutOfMemoryError=kill -9 %p",
    ]
    if (config.java_path.parent / "javac").exists():
        options.extend(_JDK_ONLY_MODULE_OPTIONS)
    return options


def _system_properties(config: CassandraNodeConfig) -> list[str]:
    properties = [
        f"-Dcassandra.config=file://{config.conf_dir}/cassandra.yaml",
        f"-Dlogback.configurationFile={config.conf_dir}/logback.xml",
        f"-Dcassandra.logdir={config.log_dir}",
        f"-Dcassandra.storagedir={config.data_dir}",
        f"-Dcassandra.triggers_dir={config.conf_dir / 'triggers'}",
        # Without this the daemon closes its standard output and error after start-up.
        "-Dcassandra-foreground=yes",
        # JNA unpacks its native library here; the folder must allow executing files.
        f"-Djna.tmpdir={config.workdir / 'tmp'}",
        f"-Djava.io.tmpdir={config.workdir / 'tmp'}",
        # Start-up shortcuts for a single node: no wait for gossip to settle,
        # a short ring delay and no delay before creating the default superuser.
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.ring_delay_ms=100",
        "-Dcassandra.superuser_setup_delay_ms=0",
    ]
    if config.unsafe_system:
        properties.append("-Dcassandra.unsafesystem=true")
    if config.jmx_port is not None:
        properties.extend([
            f"-Dcassandra.jmx.local.port={config.jmx_port}",
            "-Dcom.sun.management.jmxremote.authenticate=false",
        ])
    return properties


def nodetool(server: CassandraServer, *args: str, timeout_s: float = 120.0) -> str:
    """Run Cassandra's nodetool against the node over local JMX; return its standard output."""
    if server.jmx_port is None:
        raise StackError("this node was started with jmx_port=None; start it with JMX to use nodetool")
    argv = [
        str(server.config.java_path),
        *_JAVA17_MODULE_OPTIONS,
        f"-Dlogback.configurationFile={_TOOLS_LOGBACK_PATH}",
        # nodetool keeps a command history under ~/.cassandra; keep it with the node.
        f"-Duser.home={server.workdir}",
        "-cp", f"{server.config.lib_dir}/*",
        "org.apache.cassandra.tools.NodeTool",
        "-h", server.host,
        "-p", str(server.jmx_port),
        *args,
    ]
    return run_checked(argv, what=f"nodetool {' '.join(args)}", timeout_s=timeout_s)


@contextmanager
def cql_session(server: CassandraServer, keyspace: str | None = None,
                timeout_s: float = 10.0) -> Iterator["Session"]:
    """Open a Python driver session to the node, closed on exit."""
    cluster = _new_cluster(server.host, server.native_port, timeout_s)
    try:
        yield cluster.connect(keyspace)
    finally:
        cluster.shutdown()


def _new_cluster(host: str, port: int, timeout_s: float) -> "Cluster":
    # Imported here because the driver is a test dependency of the project.
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy

    profile = ExecutionProfile(
        load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=DATACENTER),
        request_timeout=timeout_s,
    )
    return Cluster(
        contact_points=[host],
        port=port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=timeout_s,
        control_connection_timeout=timeout_s,
        protocol_version=5,
    )


def _serves_cql(config: CassandraNodeConfig) -> bool:
    """Return whether this node, not another one on the same port, runs a CQL query."""
    cluster = _new_cluster(LOOPBACK, config.native_port, timeout_s=5.0)
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version, listen_port FROM system.local", timeout=5.0).one()
    finally:
        cluster.shutdown()
    return row is not None and row.release_version is not None and row.listen_port == config.storage_port


def create_kask_schema(server: CassandraServer, keyspace: str = "kask", table: str = "values",
                       timeout_s: float = 60.0) -> None:
    """Create Kask's keyspace and table if they do not exist, and wait for schema agreement.

    The keyspace uses NetworkTopologyStrategy with one replica in
    ``datacenter1``, so Kask's LOCAL_QUORUM and EACH_QUORUM requests need the
    one node only.
    """
    for name in (keyspace, table):
        if not _CQL_IDENTIFIER.match(name):
            raise StackError(
                f"invalid CQL name {name!r}: use a letter then up to 47 letters, digits or underscores"
            )

    with cql_session(server, timeout_s=timeout_s) as session:
        statements = [
            f'CREATE KEYSPACE IF NOT EXISTS "{keyspace}" WITH replication = '
            f"{{'class': 'NetworkTopologyStrategy', '{DATACENTER}': 1}}",
            # "values" is a reserved CQL word, so table names are always quoted.
            f'CREATE TABLE IF NOT EXISTS "{keyspace}"."{table}" (key text PRIMARY KEY, value blob)',
        ]
        for statement in statements:
            result = session.execute(statement, timeout=timeout_s)
            if not result.response_future.is_schema_agreed:
                agreed = session.cluster.control_connection.wait_for_schema_agreement(wait_time=timeout_s)
                if not agreed:
                    raise StackError(
                        f"schema did not reach agreement within {timeout_s:.0f} s after: {statement}; "
                        f"see {server.system_log}"
                    )
    log.info("Kask schema ready: %s.%s on %s:%d", keyspace, table, server.host, server.native_port)


def directory_size_bytes(path: Path) -> int:
    """Sum the sizes of the regular files under ``path``."""
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file() and not entry.is_symlink())
