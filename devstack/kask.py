"""Kask, Wikimedia's HTTP key-value service on Cassandra, for the local test stack.

Kask's own source cannot be fetched here: the Go module proxy rejects
github.com/wikimedia/mediawiki-services-kask. So by default the stack runs
**kask-standin**, a Go program in devstack/kask_standin/. It serves Kask's
HTTP API from Kask's YAML configuration on the same Cassandra table.
It names itself in /healthz ("implementation": "kask-standin"), in the
``kask_build_info`` metric and in its first log line.

To run real Kask instead, build it elsewhere and point ECHOSEEN_KASK_BINARY at
the binary: ``kask_binary()`` then returns it, and ``start_kask`` runs it with
the same ``--config`` file. ``KaskServer.implementation`` tells which one runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from devstack.cassandra import DATACENTER, CassandraServer, create_kask_schema
from devstack.process import LOOPBACK, ManagedProcess, StackError, cache_dir, free_port, run_checked

log = logging.getLogger(__name__)

KASK_BINARY_ENV = "ECHOSEEN_KASK_BINARY"
STANDIN_IMPLEMENTATION = "kask-standin"
STANDIN_VERSION = "0.1.0"
STANDIN_SOURCE_DIR = Path(__file__).resolve().parent / "kask_standin"
DEFAULT_BASE_URI = "/echoseen/v1/"
ECHO_TTL_S = 31536000  # one year, the TTL of Wikimedia's echo store

# Files that make up the stand-in's build; tests (*_test.go) are not compiled into it.
_SOURCE_PATTERNS = ("*.go", "go.mod", "go.sum")


@dataclass(frozen=True)
class KaskTLS:
    """Certificate and private key (PEM files) that make Kask serve HTTPS."""

    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class KaskSettings:
    """The values written to Kask's YAML configuration file."""

    listen_port: int
    cassandra_port: int
    default_ttl_s: int = ECHO_TTL_S
    base_uri: str = DEFAULT_BASE_URI
    listen_address: str = LOOPBACK
    service_name: str = "echoseen-kask"
    log_level: str = "info"
    tls: KaskTLS | None = None
    cassandra_hosts: tuple[str, ...] = (LOOPBACK,)
    keyspace: str = "kask"
    table: str = "values"
    local_dc: str = DATACENTER
    query_timeout_ms: int = 12000
    connect_timeout_ms: int = 5000

    def to_yaml(self) -> str:
        """Render Kask's config.yaml. Strings are JSON-quoted, which YAML reads as double-quoted scalars."""
        quote = json.dumps
        lines = [
            f"service_name: {quote(self.service_name)}",
            f"base_uri: {quote(self.base_uri)}",
            f"listen_address: {quote(self.listen_address)}",
            f"listen_port: {self.listen_port}",
            f"default_ttl: {self.default_ttl_s}",
            f"log_level: {quote(self.log_level)}",
        ]
        if self.tls is not None:
            lines += [
                "tls:",
                f"  cert: {quote(str(self.tls.cert_path))}",
                f"  key: {quote(str(self.tls.key_path))}",
            ]
        lines += [
            "cassandra:",
            f"  hosts: [{', '.join(quote(host) for host in self.cassandra_hosts)}]",
            f"  port: {self.cassandra_port}",
            f"  keyspace: {quote(self.keyspace)}",
            f"  table: {quote(self.table)}",
            f"  local_dc: {quote(self.local_dc)}",
            f"  query_timeout_ms: {self.query_timeout_ms}",
            f"  connect_timeout_ms: {self.connect_timeout_ms}",
        ]
        return "\n".join(lines) + "\n"


@dataclass
class KaskServer:
    """A running (or stopped) Kask process started by ``start_kask``."""

    settings: KaskSettings
    binary: Path
    config_path: Path
    process: ManagedProcess
    startup_s: float
    implementation: str = "unknown"
    version: str = "unknown"
    startup_history_s: list[float] = field(default_factory=list)

    @property
    def scheme(self) -> str:
        return "https" if self.settings.tls else "http"

    @property
    def host(self) -> str:
        return self.settings.listen_address

    @property
    def port(self) -> int:
        return self.settings.listen_port

    @property
    def base_url(self) -> str:
        """The server root, e.g. http://127.0.0.1:PORT, where /healthz and /metrics live."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL that keys are appended to, e.g. http://127.0.0.1:PORT/echoseen/v1/."""
        return self.base_url + self.settings.base_uri

    @property
    def is_standin(self) -> bool:
        return self.implementation == STANDIN_IMPLEMENTATION

    def is_running(self) -> bool:
        return self.process.is_running()

    def ssl_context(self) -> ssl.SSLContext | None:
        """Return a client context that trusts this server's certificate, or None for plain HTTP."""
        if self.settings.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.settings.tls.cert_path))

    def stop(self, timeout_s: float = 15.0) -> None:
        self.process.stop(timeout_s=timeout_s)

    def kill(self) -> None:
        """Kill with SIGKILL, as a crash would."""
        self.process.signal(signal.SIGKILL)
        if self.process.popen is not None:
            self.process.popen.wait(timeout=10)
        self.process.stop()

    def restart(self, timeout_s: float = 60.0) -> float:
        """Stop the process if it runs and start it again on the same port; return the start seconds."""
        if self.is_running():
            self.stop()
        self.process, self.startup_s = _launch(self.binary, self.settings, self.config_path, timeout_s)
        self.startup_history_s.append(self.startup_s)
        return self.startup_s


def _go_environment() -> dict[str, str]:
    go_root = cache_dir() / "go"
    return {
        # Module downloads and compiled packages stay in the stack's cache, so a
        # second build fetches nothing and recompiles only what changed.
        "GOPATH": str(go_root),
        "GOMODCACHE": str(go_root / "pkg" / "mod"),
        "GOCACHE": str(go_root / "build-cache"),
        "GOFLAGS": "-mod=mod",
        # Build with the installed Go; never download another toolchain.
        "GOTOOLCHAIN": "local",
    }


def _source_files() -> list[Path]:
    files = {path for pattern in _SOURCE_PATTERNS for path in STANDIN_SOURCE_DIR.glob(pattern)}
    return sorted(path for path in files if not path.name.endswith("_test.go"))


def _go_version(go: str) -> str:
    return run_checked([go, "env", "GOVERSION"], what="reading the Go version", env=_go_environment()).strip()


def standin_source_hash(go_version: str) -> str:
    """Hash the stand-in's sources and the Go version; a change to either means a new build."""
    digest = hashlib.sha256(go_version.encode())
    for path in _source_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build_kask_standin() -> Path:
    """Build kask-standin once per source version into the cache and return the binary.

    The sources are copied next to the binary and built there, so the
    repository (or an installed package) is never written to. Go modules come
    from the Go module proxy into the cache the first time; the new ones are
    printed with their sizes.
    """
    go = shutil.which("go")
    if go is None:
        raise StackError("the go command is not on PATH; install Go 1.26 or set ECHOSEEN_KASK_BINARY to a Kask binary")
    go_version = _go_version(go)
    source_hash = standin_source_hash(go_version)
    build_dir = cache_dir() / f"kask-standin-{source_hash}"
    binary = build_dir / "kask-standin"
    if binary.exists():
        return binary

    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".build.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        _build(go, go_version, source_hash, build_dir, binary)
    return binary


def _build(go: str, go_version: str, source_hash: str, build_dir: Path, binary: Path) -> None:
    source_dir = build_dir / "src"
    shutil.rmtree(source_dir, ignore_errors=True)
    source_dir.mkdir()
    for path in _source_files():
        shutil.copyfile(path, source_dir / path.name)

    environment = _go_environment()
    download_dir = Path(environment["GOMODCACHE"]) / "cache" / "download"
    modules_before = _module_archives(download_dir)
    print(
        f"devstack: building kask-standin {STANDIN_VERSION}+{source_hash} with {go_version} into {build_dir}; "
        f"missing Go modules come from the Go module proxy into {environment['GOMODCACHE']}",
        file=sys.stderr,
        flush=True,
    )

    started = time.monotonic()
    ldflags = " ".join([
        f"-X main.version={STANDIN_VERSION}+{source_hash}",
        f"-X main.buildDate={datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"-X main.buildHost={socket.gethostname()}",
    ])
    partial = build_dir / "kask-standin.partial"
    run_checked(
        [go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(partial), "."],
        what="building kask-standin",
        cwd=source_dir,
        env=environment,
        timeout_s=900,
    )
    partial.rename(binary)
    elapsed_s = time.monotonic() - started

    fetched = sorted(_module_archives(download_dir) - modules_before)
    for archive in fetched:
        module = archive.relative_to(download_dir).parent.parent
        print(f"devstack: fetched Go module {module}@{archive.stem} "
              f"({archive.stat().st_size / 1024:.0f} KiB)", file=sys.stderr)
    print(
        f"devstack: built {binary} ({binary.stat().st_size / 1e6:.1f} MB) in {elapsed_s:.1f} s, "
        f"{len(fetched)} Go modules fetched",
        file=sys.stderr,
        flush=True,
    )


def _module_archives(download_dir: Path) -> set[Path]:
    if not download_dir.exists():
        return set()
    return set(download_dir.rglob("*.zip"))


def kask_binary() -> Path:
    """Return the Kask binary to run: ECHOSEEN_KASK_BINARY when set, else the (built) stand-in."""
    configured = os.environ.get(KASK_BINARY_ENV)
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise StackError(f"{KASK_BINARY_ENV}={configured} is not an executable file; "
                             f"unset it to use the kask-standin build")
        return path
    return build_kask_standin()


def start_kask(
    workdir: Path,
    cassandra: CassandraServer,
    default_ttl_s: int = ECHO_TTL_S,
    port: int | None = None,
    base_uri: str = DEFAULT_BASE_URI,
    tls: KaskTLS | None = None,
    *,
    keyspace: str = "kask",
    table: str = "values",
    create_schema: bool = True,
    log_level: str = "info",
    timeout_s: float = 60.0,
) -> KaskServer:
    """Start Kask (or the stand-in, see ``kask_binary``) on ``cassandra`` and wait for /healthz.

    ``create_schema`` first creates the keyspace and table if they are
    missing, since Kask exits at start when its keyspace does not exist.
    Files go to ``workdir`` as kask-<port>.yaml and kask-<port>.log.
    """
    if default_ttl_s < 0:
        raise StackError(f"default_ttl_s is {default_ttl_s}; use seconds, or 0 for values that never expire")
    if not base_uri.startswith("/") or not base_uri.endswith("/"):
        raise StackError(f"base_uri {base_uri!r} must start and end with '/', e.g. {DEFAULT_BASE_URI!r}")

    binary = kask_binary()
    if create_schema:
        create_kask_schema(cassandra, keyspace=keyspace, table=table)

    settings = KaskSettings(
        listen_port=port or free_port(),
        cassandra_port=cassandra.native_port,
        cassandra_hosts=(cassandra.host,),
        default_ttl_s=default_ttl_s,
        base_uri=base_uri,
        tls=tls,
        keyspace=keyspace,
        table=table,
        log_level=log_level,
    )
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"kask-{settings.listen_port}.yaml"
    config_path.write_text(settings.to_yaml())

    process, startup_s = _launch(binary, settings, config_path, timeout_s)
    server = KaskServer(settings=settings, binary=binary, config_path=config_path, process=process,
                        startup_s=startup_s)
    server.startup_history_s.append(startup_s)
    server.implementation, server.version = _identify(server)
    log.info("%s %s ready at %s in %.1f s (binary %s)", server.implementation, server.version, server.url,
             startup_s, binary)
    return server


def _launch(binary: Path, settings: KaskSettings, config_path: Path,
            timeout_s: float) -> tuple[ManagedProcess, float]:
    process = ManagedProcess(
        name=f"kask:{settings.listen_port}",
        argv=[str(binary), "--config", str(config_path)],
        log_path=config_path.with_suffix(".log"),
        cwd=config_path.parent,
    )
    started = time.monotonic()
    process.start()
    try:
        healthz_url = f"{'https' if settings.tls else 'http'}://{settings.listen_address}:{settings.listen_port}/healthz"
        process.wait_until(lambda: _http_get(healthz_url)[0] == 200, timeout_s, "/healthz returned 200")
    except BaseException:
        process.stop()
        raise
    return process, time.monotonic() - started


def _http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    # Readiness only checks that the process responds on its port, so the
    # certificate of a test HTTPS listener is not verified here.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _identify(server: KaskServer) -> tuple[str, str]:
    """Read the implementation name and version from /healthz, or from kask_build_info in /metrics."""
    implementation, version = "kask", "unknown"
    _, body = _http_get(server.base_url + "/healthz")
    try:
        health = json.loads(body) if body.strip() else {}
    except ValueError:
        health = {}
    if isinstance(health, dict):
        implementation = str(health.get("implementation", implementation))
        version = str(health.get("version", version))
    if version == "unknown":
        version = _version_from_metrics(server) or version
    return implementation, version


def _version_from_metrics(server: KaskServer) -> str | None:
    from prometheus_client.parser import text_string_to_metric_families

    status, body = _http_get(server.base_url + "/metrics")
    if status != 200:
        return None
    for family in text_string_to_metric_families(body.decode("utf-8", errors="replace")):
        if family.name == "kask_build_info":
            for sample in family.samples:
                if "version" in sample.labels:
                    return sample.labels["version"]
    return None
