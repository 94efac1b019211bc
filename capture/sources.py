"""The Redis servers the capture, the backfill and verify read, and how to connect to them.

A source is one Redis server and database: a server listed in the
configuration, or a primary of a Redis Cluster. Each is read directly, never
through a proxy, because twemproxy-style proxies support neither pub/sub nor
SCAN, and keyspace notifications are local to the node that holds the key.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import key_slot
from redis.retry import Retry

from echoseen.config import Config, mask_url
from echoseen.errors import ConfigError, ServiceUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    host: str
    port: int
    db: int
    tls: bool
    cluster: bool = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def name(self) -> str:
        """Stable identifier used in events, state and metrics."""
        return f"{self.host}:{self.port}/{self.db}"


def configured_sources(config: Config) -> list[Source]:
    """Sources as listed in [redis] servers (for a cluster: its startup nodes)."""
    sources = []
    for url in config.redis.servers:
        parts = urlsplit(url)
        db = int(parts.path.lstrip("/") or "0")
        if config.redis.cluster and db != 0:
            raise ConfigError(f"Redis URL {mask_url(url)!r} names database {db}, but Redis Cluster only has "
                              "database 0; drop the path or set [redis] cluster = false")
        sources.append(Source(parts.hostname or "127.0.0.1", parts.port or 6379, db,
                              parts.scheme == "rediss", config.redis.cluster))
    return sources


def connect(config: Config, source: Source, *, retries: int = 1, client_name: str = "echoseen",
            socket_timeout_s: float | None = -1.0) -> redis.Redis:
    """Open a client to one source with the configured credentials and TLS settings.

    ``socket_timeout_s`` -1 means the configured [redis] socket_timeout_s; None
    blocks forever (used only where the caller bounds the wait itself).
    """
    password = config.redis_password()
    kwargs = dict(
        host=source.host,
        port=source.port,
        db=source.db,
        username=config.redis.username or None,
        password=password.reveal() if password else None,
        socket_timeout=config.redis.socket_timeout_s if socket_timeout_s == -1.0 else socket_timeout_s,
        socket_connect_timeout=config.redis.socket_timeout_s,
        client_name=client_name,
        retry=Retry(NoBackoff(), retries),
        protocol=2,
    )
    if source.tls:
        kwargs.update(ssl=True, ssl_ca_certs=config.redis.tls_ca_file or None,
                      ssl_certfile=config.redis.tls_cert_file or None, ssl_keyfile=config.redis.tls_key_file or None)
    return redis.Redis(**kwargs)


def describe_connect_error(source: Source, exc: Exception) -> str:
    """Turn a redis-py error at connect time into a message that names the setting to fix."""
    text = str(exc)
    # redis-py raises AuthenticationError for NOAUTH too, with the text "Authentication required."
    if "NOAUTH" in text or "Authentication required" in text:
        return (f"Redis {source.address} requires a password: {text}; set [redis] password_file or the "
                "variable named by password_env")
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in text or "invalid username-password" in text:
        return (f"Redis {source.address} rejected the credentials: {text}; check [redis] username and the "
                "password in [redis] password_file or the variable named by password_env")
    # redis-py raises a NOPERM reply as NoPermissionError and drops "NOPERM" from its text.
    if isinstance(exc, redis.exceptions.NoPermissionError) or "NOPERM" in text:
        return (f"Redis {source.address}: the ACL user lacks a permission: {text}; compare the user's ACL with "
                "the one in docs/security.md")
    if source.tls and _is_tls_failure(exc):
        return (f"the TLS handshake with Redis {source.address} failed: {text}; check [redis] tls_ca_file (the CA "
                "that signed the server's certificate) and, when the server requires client certificates "
                "(tls-auth-clients), [redis] tls_cert_file and tls_key_file")
    return (f"cannot connect to Redis {source.address} (from [redis] servers): {text}; check that the server "
            "runs, the address is right and the URL scheme matches the port (rediss:// for a TLS port)")


def _is_tls_failure(exc: Exception) -> bool:
    # redis-py wraps ssl.SSLError in its ConnectionError and keeps only the text. "_ssl.c" marks errors raised by
    # the ssl module, such as the EOF a server sends after rejecting a client without a certificate.
    cause = exc.__cause__ or exc.__context__
    text = str(exc)
    return isinstance(cause, ssl.SSLError) or "SSL" in text or "_ssl.c" in text or "certificate" in text


def ping(config: Config, source: Source) -> dict:
    """Connect, authenticate and return INFO server, or raise ServiceUnavailable with a clear message."""
    client = connect(config, source)
    try:
        client.ping()
        return client.info("server")
    except (redis.RedisError, OSError) as exc:
        raise ServiceUnavailable(describe_connect_error(source, exc)) from exc
    finally:
        client.close()


def discover_primaries(config: Config) -> list[Source]:
    """Return the sources to read: the configured servers, or every primary of the cluster."""
    sources = configured_sources(config)
    if not config.redis.cluster:
        return sources
    errors = []
    for startup in sources:
        client = connect(config, startup)
        try:
            return cluster_primaries(client, startup)
        except (redis.RedisError, OSError) as exc:
            errors.append(describe_connect_error(startup, exc))
        finally:
            client.close()
    raise ServiceUnavailable("no startup node of the Redis Cluster answered: " + "; ".join(errors))


def cluster_primaries(client: redis.Redis, startup: Source) -> list[Source]:
    """Read the primaries that own slots from CLUSTER SLOTS, which Redis 3.0 and later all support."""
    slots = client.execute_command("CLUSTER SLOTS")
    primaries: dict[tuple[str, int], Source] = {}
    for entry in slots:
        node = entry[2]
        host = node[0].decode() if isinstance(node[0], bytes) else node[0]
        # An empty host means "the address you reached me on".
        host = host or startup.host
        port = int(node[1])
        primaries[(host, port)] = Source(host, port, 0, startup.tls, cluster=True)
    return sorted(primaries.values(), key=lambda source: (source.host, source.port))


def node_hash_tag(client: redis.Redis, source: Source) -> str:
    """Return a hash tag whose slot this node owns, so the capture's own keys land on it.

    Standalone servers need no tag; an empty string is returned.
    """
    if not source.cluster:
        return ""
    owned: list[tuple[int, int]] = []
    for entry in client.execute_command("CLUSTER SLOTS"):
        node = entry[2]
        host = node[0].decode() if isinstance(node[0], bytes) else node[0]
        if int(node[1]) == source.port and (host or source.host) == source.host:
            owned.append((int(entry[0]), int(entry[1])))
    for attempt in range(100_000):
        tag = f"n{attempt}"
        slot = key_slot(tag.encode())
        if any(low <= slot <= high for low, high in owned):
            return "{" + tag + "}"
    raise ServiceUnavailable(f"Redis Cluster node {source.address} owns no slot; the capture cannot place its "
                             "heartbeat key there")
