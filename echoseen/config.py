"""Configuration for every subcommand: one TOML file plus environment variables.

Each section of the file is a frozen dataclass below. Every setting can be
overridden by an environment variable named ``ECHOSEEN_<SECTION>_<SETTING>``
in upper case, for example ``ECHOSEEN_KAFKA_BOOTSTRAP_SERVERS``. Lists are
given in the environment as comma-separated values and tables as JSON
objects. Unknown sections and settings are rejected, so a typo cannot silently
fall back to a default.

Secrets (the Redis password, Kafka SASL password and the Kask HMAC key) are
never settings themselves: the configuration names a file or an environment
variable that holds them, and :class:`Secret` masks them in every repr.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from echoseen.errors import ConfigError

ENV_PREFIX = "ECHOSEEN_"
CONFIG_PATH_ENV = "ECHOSEEN_CONFIG"

ECHO_KEY_PATTERNS = ("*:echo:seen:alert:time:*", "*:echo:seen:message:time:*")
# MediaWiki escapes ":" inside key components and user ids are integers, so every real Echo seen-time key
# has exactly this shape; the globs above alone would also accept look-alikes such as "...:time:u5".
ECHO_KEY_REGEX = r"[^:]+:echo:seen:(alert|message):time:[0-9]+"


class Secret:
    """A secret value that never appears in a repr, a log line or an error message."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def setting(default: Any, doc: str, unit: str = "", secret_source: bool = False) -> Any:
    """Declare a setting with its default, its help text and its unit."""
    metadata = {"doc": doc, "unit": unit, "secret_source": secret_source}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class RedisConfig:
    servers: tuple[str, ...] = setting(
        ("redis://127.0.0.1:6379/0",),
        "Redis servers to read, as redis:// or rediss:// (TLS) URLs with the database number as the path. "
        "List every backend server behind a proxy such as twemproxy; with cluster = true, any nodes of the cluster.")
    cluster: bool = setting(False, "Treat the servers as startup nodes of a Redis Cluster and follow its primaries.")
    username: str = setting("", "ACL user name; empty for the default user.")
    password_file: str = setting("", "File whose first line is the Redis password.", secret_source=True)
    password_env: str = setting("ECHOSEEN_REDIS_PASSWORD",
                                "Environment variable that holds the Redis password when password_file is empty.",
                                secret_source=True)
    tls_ca_file: str = setting("", "CA bundle that verifies the servers of rediss:// URLs; empty for the system CAs.")
    tls_cert_file: str = setting("", "Client certificate for rediss:// servers that require one.")
    tls_key_file: str = setting("", "Private key of tls_cert_file.")
    socket_timeout_s: float = setting(5.0, "Timeout of each Redis command.", "seconds")
    key_patterns: tuple[str, ...] = setting(
        ECHO_KEY_PATTERNS,
        "Glob patterns (Redis MATCH syntax) of the keys to replicate; the defaults are Echo's seen-time keys of "
        "every wiki and of global users, both types.")
    key_regex: str = setting(
        ECHO_KEY_REGEX,
        "Python regular expression a whole key must also match to be replicated; the default accepts exactly "
        "the shape MediaWiki gives Echo seen-time keys. Empty to rely on key_patterns alone.")
    max_value_bytes: int = setting(1024, "Values larger than this are counted as bad values and not published.",
                                   "bytes")
    force_pttl: bool = setting(False, "Read expiries with PTTL plus TIME even where PEXPIRETIME exists (Redis 7.0+).")


@dataclass(frozen=True, repr=False)
class KafkaConfig:
    bootstrap_servers: str = setting("127.0.0.1:9092", "Kafka bootstrap servers, comma-separated host:port.")
    topic: str = setting("echoseen.seen-times", "Topic of seen-time events (live, catch-up and snapshot).")
    dead_letter_topic: str = setting("echoseen.seen-times.dlq", "Topic where the replicator parks records that "
                                     "can never be applied.")
    state_topic: str = setting("echoseen.capture-state", "Compacted topic where the capture keeps its position, "
                               "gaps and heartbeat, and verify its last result.")
    partitions: int = setting(12, "Partition count that `echoseen topics --create` gives the event topic.")
    replication_factor: int = setting(-1, "Replication factor for created topics; -1 uses the broker default.")
    retention_ms: int = setting(30 * 24 * 3600 * 1000,
                                "Retention of the event topic; long enough for backfill, migration and a replay "
                                "window.", "milliseconds")
    max_message_bytes: int = setting(1_048_576, "max.message.bytes of created topics.", "bytes")
    client: dict[str, str] = setting(
        {}, "librdkafka settings passed through to every client, such as security.protocol, sasl.mechanism, "
        "sasl.username, ssl.ca.location. Give the SASL password with sasl_password_file or sasl_password_env.")
    sasl_password_file: str = setting("", "File whose first line is the SASL password.", secret_source=True)
    sasl_password_env: str = setting("ECHOSEEN_KAFKA_SASL_PASSWORD",
                                     "Environment variable that holds the SASL password when sasl_password_file is "
                                     "empty.", secret_source=True)

    def masked_client(self) -> dict[str, str]:
        return {key: ("***" if _looks_secret(key) else value) for key, value in self.client.items()}

    def __repr__(self) -> str:
        fields = ", ".join(f"{item.name}={self.masked_client() if item.name == 'client' else getattr(self, item.name)!r}"
                           for item in dataclasses.fields(self))
        return f"KafkaConfig({fields})"


@dataclass(frozen=True)
class KaskConfig:
    url: str = setting("http://127.0.0.1:8081/echoseen/v1/",
                       "Kask base URL including the service's base_uri; keys are appended percent-encoded.")
    body_format: str = setting("JSON", "RESTBagOStuff serialization_type MediaWiki uses: JSON, PHP or legacy.")
    hmac_key_file: str = setting("", "File whose first line is RESTBagOStuff's hmac_key.", secret_source=True)
    hmac_key_env: str = setting("ECHOSEEN_KASK_HMAC_KEY",
                                "Environment variable that holds the HMAC key when hmac_key_file is empty; unset "
                                "or empty means no HMAC.", secret_source=True)
    ca_file: str = setting("", "CA bundle that verifies an https:// Kask; empty for the system CAs.")
    timeout_s: float = setting(5.0, "Timeout of each Kask request.", "seconds")
    max_key_bytes: int = setting(1024, "Keys longer than this (UTF-8 bytes) are treated as unaddressable in Kask.",
                                 "bytes")


@dataclass(frozen=True)
class CaptureConfig:
    channel_mode: str = setting("keyspace",
                                "keyspace: pattern-subscribe to __keyspace@<db>__ channels of the watched keys, so "
                                "Redis drops other keys' notifications (needs flags K plus g$xe). keyevent: "
                                "subscribe to __keyevent@<db>__ channels and filter keys here (needs E plus g$xe).")
    read_batch_size: int = setting(500, "Keys read from Redis per pipelined batch.", "keys")
    max_pending_keys: int = setting(200_000, "Distinct keys waiting to be read; beyond this the capture records a "
                                    "gap and closes it with a catch-up scan instead of growing.", "keys")
    heartbeat_interval_s: float = setting(1.0, "How often the capture writes its heartbeat key.", "seconds")
    heartbeat_timeout_s: float = setting(10.0, "A subscription that has not delivered the heartbeat for this long "
                                         "is treated as silent: a gap is recorded and it is reconnected.", "seconds")
    clock_skew_margin_s: float = setting(300.0, "Catch-up scans publish keys whose seen time is not older than the "
                                         "gap start minus this margin, to cover application servers whose clocks "
                                         "run behind Redis.", "seconds")
    catchup_scan_count: int = setting(1000, "COUNT hint of catch-up SCAN calls.", "keys")
    catchup_max_keys_per_s: float = setting(50_000.0, "Rate limit of catch-up scans; 0 for none.",
                                            "keys per second")
    state_flush_interval_s: float = setting(1.0, "How often the capture persists its position to the state topic.",
                                            "seconds")
    allow_config_set: bool = setting(False, "Let the capture run CONFIG SET notify-keyspace-events itself when the "
                                     "flags it needs are missing, instead of refusing to start.")
    shutdown_timeout_s: float = setting(20.0, "Upper bound on the flush at shutdown.", "seconds")
    instance_lock_ttl_s: float = setting(15.0, "Lifetime of the lock key that stops a second capture on the same "
                                         "Redis; refreshed every heartbeat.", "seconds")
    max_produce_queue: int = setting(500_000, "Records buffered in the Kafka client before the capture treats "
                                     "Kafka as unavailable and records a gap.", "records")
    metrics_port: int = setting(9464, "Port of the capture's /metrics, /healthz and /readyz.")


@dataclass(frozen=True)
class ReplicatorConfig:
    group_id: str = setting("echoseen-replicator", "Kafka consumer group of the replicator.")
    max_in_flight: int = setting(64, "Concurrent Kask requests.", "requests")
    max_buffered_records: int = setting(20_000, "Records consumed but not yet applied; consumption pauses above it.",
                                        "records")
    max_requests_per_s: float = setting(0.0, "Cap on Kask requests per second; 0 for none.", "requests per second")
    dry_run: bool = setting(False, "Compute and count outcomes without writing to Kask.")
    commit_interval_s: float = setting(1.0, "How often stored offsets are committed.", "seconds")
    retry_base_s: float = setting(0.2, "First delay of the capped exponential backoff for Kask retries.", "seconds")
    retry_cap_s: float = setting(30.0, "Maximum delay between Kask retries.", "seconds")
    dead_letter_after_s: float = setting(300.0, "A record whose Kask request keeps failing with a 5xx for this long "
                                         "while other requests succeed goes to the dead-letter topic.", "seconds")
    shutdown_timeout_s: float = setting(30.0, "Upper bound on finishing in-flight requests at shutdown.", "seconds")
    session_timeout_s: float = setting(45.0, "Kafka consumer group session timeout: a replicator that sends no "
                                       "heartbeat for this long loses its partitions to the other members.",
                                       "seconds")
    metrics_port: int = setting(9465, "Port of the replicator's /metrics, /healthz and /readyz.")


@dataclass(frozen=True)
class BackfillConfig:
    scan_count: int = setting(1000, "COUNT hint of each SCAN call.", "keys")
    read_batch_size: int = setting(1000, "Keys read per pipelined batch; also the cap on one batch.", "keys")
    max_keys_per_s: float = setting(0.0, "Rate limit of scanned keys; 0 for none.", "keys per second")
    checkpoint_file: str = setting("echoseen-backfill.checkpoint.json",
                                   "File that stores the scan position of each server for --resume.")
    checkpoint_interval_s: float = setting(5.0, "How often the checkpoint is written.", "seconds")
    cutoff: str = setting("", "Copy only keys whose seen time is at or after this ISO 8601 date or datetime "
                          "(UTC when no zone is given); empty copies every key.")
    ping_sample_interval_s: float = setting(1.0, "How often the job samples PING latency to report its load on "
                                            "the server.", "seconds")
    progress_log_interval_s: float = setting(10.0, "Interval of progress log lines when not on a terminal.",
                                             "seconds")
    reconnect_timeout_s: float = setting(300.0, "How long the job keeps reconnecting to a Redis server it lost "
                                         "mid-run before it stops with the checkpoint kept for --resume.",
                                         "seconds")


@dataclass(frozen=True)
class VerifyConfig:
    max_keys_per_s: float = setting(0.0, "Rate limit of compared keys; 0 for none.", "keys per second")
    concurrency: int = setting(32, "Concurrent Kask reads.", "requests")
    recheck_rounds: int = setting(3, "Rounds of rechecking mismatches so changes still in flight settle.")
    recheck_delay_s: float = setting(5.0, "Delay before each recheck round.", "seconds")
    sample_keys: int = setting(10, "Sample keys printed per category.", "keys")
    bad_values_fail: bool = setting(False, "Count bad values in Redis as failures, not only report them.")
    scan_count: int = setting(1000, "COUNT hint of verify's SCAN calls; also the most keys compared per batch.",
                              "keys")
    progress_log_interval_s: float = setting(10.0, "Interval of progress log lines when not on a terminal.",
                                             "seconds")


@dataclass(frozen=True)
class MetricsConfig:
    listen_address: str = setting("127.0.0.1", "Address the metrics and health endpoints bind to.")


@dataclass(frozen=True)
class LoggingConfig:
    level: str = setting("INFO", "Log level: DEBUG, INFO, WARNING or ERROR.")
    format: str = setting("text", "text for people, json for log collectors.")


SECTIONS: dict[str, type] = {
    "redis": RedisConfig,
    "kafka": KafkaConfig,
    "kask": KaskConfig,
    "capture": CaptureConfig,
    "replicator": ReplicatorConfig,
    "backfill": BackfillConfig,
    "verify": VerifyConfig,
    "metrics": MetricsConfig,
    "logging": LoggingConfig,
}


@dataclass(frozen=True)
class Config:
    redis: RedisConfig = field(default_factory=RedisConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    kask: KaskConfig = field(default_factory=KaskConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    replicator: ReplicatorConfig = field(default_factory=ReplicatorConfig)
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source_path: str = ""
    # The environment the configuration was loaded from, where *_env secret sources are looked up.
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False, compare=False)

    def redis_password(self) -> Secret:
        return read_secret(self.redis.password_file, self.redis.password_env, "redis.password_file", self.environ)

    def kafka_sasl_password(self) -> Secret:
        return read_secret(self.kafka.sasl_password_file, self.kafka.sasl_password_env, "kafka.sasl_password_file",
                           self.environ)

    def kask_hmac_key(self) -> Secret:
        return read_secret(self.kask.hmac_key_file, self.kask.hmac_key_env, "kask.hmac_key_file", self.environ)

    def masked(self) -> dict[str, dict[str, Any]]:
        """Return the effective configuration as plain data with secret-bearing client settings masked."""
        result: dict[str, dict[str, Any]] = {}
        for name in SECTIONS:
            section = dataclasses.asdict(getattr(self, name))
            if name == "kafka":
                section["client"] = self.kafka.masked_client()
            if name == "redis":
                section["servers"] = [mask_url(url) for url in section["servers"]]
            result[name] = section
        return result

    def summary(self) -> str:
        """One line of effective settings for a startup log line."""
        parts = []
        for name, values in self.masked().items():
            rendered = ",".join(f"{key}={_render(value)}" for key, value in values.items())
            parts.append(f"{name}[{rendered}]")
        return " ".join(parts)


def to_toml(config: Config, masked: bool = False) -> str:
    """Render a configuration as a TOML file that loads back to the same settings.

    Secrets stay in their files and variables; with ``masked`` the secret-looking
    Kafka client settings are shown as ``***`` too.
    """
    sections = config.masked() if masked else {name: dataclasses.asdict(getattr(config, name)) for name in SECTIONS}
    lines = []
    for section_name, values in sections.items():
        lines.append(f"[{section_name}]")
        for name, value in values.items():
            lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(key)} = {_toml_value(item)}" for key, item in value.items()) + " }"
    raise TypeError(f"cannot render {value!r} as TOML")


def _render(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "|".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _looks_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in ("password", "secret", "jaas", "key.pem", "token"))


def mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def read_secret(file_setting: str, env_setting: str, setting_name: str,
                environ: Mapping[str, str] | None = None) -> Secret:
    """Read a secret from a file (first line) or, when no file is set, from an environment variable."""
    if file_setting:
        try:
            with open(file_setting, encoding="utf-8") as secret_file:
                first_line = secret_file.readline()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the secret file {file_setting!r} named by {setting_name}: {exc.strerror}; "
                "fix the path or its permissions") from exc
        return Secret(first_line.rstrip("\r\n"))
    if env_setting:
        return Secret((os.environ if environ is None else environ).get(env_setting, ""))
    return Secret("")


def describe_sections() -> list[tuple[str, str, Any, str, str, str]]:
    """List (section, name, default, type, unit, help) for the configuration reference and --help texts."""
    rows = []
    for section_name, section_type in SECTIONS.items():
        hints = typing.get_type_hints(section_type)
        for item in dataclasses.fields(section_type):
            default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
            rows.append((section_name, item.name, default, _type_name(hints[item.name]),
                         item.metadata.get("unit", ""), item.metadata.get("doc", "")))
    return rows


def env_name(section: str, name: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{name.upper()}"


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return "list of strings"
    if origin is dict:
        return "table of strings"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(hint, str(hint))


def _coerce(section: str, name: str, hint: Any, raw: Any, from_env: bool) -> Any:
    where = env_name(section, name) if from_env else f"[{section}] {name}"
    origin = typing.get_origin(hint)
    try:
        if origin is tuple:
            if from_env:
                raw = [item.strip() for item in raw.split(",") if item.strip()]
            if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
                raise TypeError("expected a list of strings")
            return tuple(raw)
        if origin is dict:
            if from_env:
                raw = json.loads(raw)
            if not isinstance(raw, dict):
                raise TypeError("expected a table of strings")
            return {str(key): str(value) for key, value in raw.items()}
        if hint is bool:
            if from_env:
                lowered = raw.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise TypeError("expected true or false")
            if not isinstance(raw, bool):
                raise TypeError("expected true or false")
            return raw
        if hint is int:
            if isinstance(raw, bool):
                raise TypeError("expected an integer")
            return int(raw) if from_env else _require(raw, int, "an integer")
        if hint is float:
            if isinstance(raw, bool):
                raise TypeError("expected a number")
            return float(raw) if from_env else float(_require(raw, (int, float), "a number"))
        if hint is str:
            return raw if from_env else _require(raw, str, "a string")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value {raw!r} for {where}: {exc}") from exc
    raise ConfigError(f"unsupported setting type for {where}")


def _require(raw: Any, kind: Any, what: str) -> Any:
    if not isinstance(raw, kind):
        raise TypeError(f"expected {what}, got {type(raw).__name__}")
    return raw


def load(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from a TOML file (optional) and the environment.

    The file is ``path``, else the file named by ECHOSEEN_CONFIG, else none
    (defaults plus environment).
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_PATH_ENV) or None
    document: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as config_file:
                document = tomllib.load(config_file)
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file {str(path)!r} not found; pass an existing file with --config "
                              f"or {CONFIG_PATH_ENV}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {str(path)!r} is not valid TOML: {exc}") from exc

    unknown_sections = sorted(set(document) - set(SECTIONS))
    if unknown_sections:
        raise ConfigError(f"unknown section [{unknown_sections[0]}] in {path}; valid sections: "
                          f"{', '.join(SECTIONS)}")
    _reject_unknown_env(environ)

    sections: dict[str, Any] = {}
    for section_name, section_type in SECTIONS.items():
        values = document.get(section_name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{section_name}] in {path} must be a table")
        hints = typing.get_type_hints(section_type)
        known = {item.name for item in dataclasses.fields(section_type)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r} in [{section_name}] of {path}; valid settings: "
                              f"{', '.join(sorted(known))}")
        kwargs = {}
        for name in known:
            variable = env_name(section_name, name)
            if variable in environ:
                kwargs[name] = _coerce(section_name, name, hints[name], environ[variable], from_env=True)
            elif name in values:
                kwargs[name] = _coerce(section_name, name, hints[name], values[name], from_env=False)
        sections[section_name] = section_type(**kwargs)

    config = Config(**sections, source_path=str(path or ""), environ=environ)
    validate(config)
    return config


def _reject_unknown_env(environ: Mapping[str, str]) -> None:
    known = {env_name(section, item.name)
             for section, section_type in SECTIONS.items() for item in dataclasses.fields(section_type)}
    # Secret sources and the config path are read under their own names, not as settings.
    allowed = known | {CONFIG_PATH_ENV, "ECHOSEEN_CACHE_DIR", "ECHOSEEN_SCHEMA_DIR", "ECHOSEEN_KASK_BINARY"}
    for section_type in SECTIONS.values():
        for item in dataclasses.fields(section_type):
            if item.metadata.get("secret_source") and item.name.endswith("_env"):
                allowed.add(str(item.default))
    for variable in environ:
        if not variable.startswith(ENV_PREFIX) or variable in allowed:
            continue
        section = variable[len(ENV_PREFIX):].split("_", 1)[0].lower()
        if section in SECTIONS:
            raise ConfigError(f"unknown environment variable {variable}; settings of [{section}] are "
                              f"{', '.join(sorted(name for name in known if name.startswith(ENV_PREFIX + section.upper() + '_')))}")


def validate(config: Config) -> None:
    """Check values that a type alone cannot check."""
    if not config.redis.servers:
        raise ConfigError("[redis] servers is empty; list at least one redis:// URL")
    for url in config.redis.servers:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ConfigError(f"invalid Redis URL {mask_url(url)!r} in [redis] servers; expected "
                              "redis://host:port/db or rediss://host:port/db")
        if parts.password is not None:
            raise ConfigError(f"Redis URL {mask_url(url)!r} in [redis] servers contains a password; put the password "
                              "in the file named by [redis] password_file or the variable named by password_env, "
                              "so it is never printed")
        db = parts.path.lstrip("/") or "0"
        if not db.isdigit():
            raise ConfigError(f"invalid database {db!r} in Redis URL {mask_url(url)!r}; the path must be a number")
    if not config.redis.key_patterns:
        raise ConfigError("[redis] key_patterns is empty; give at least one glob pattern")
    try:
        re.compile(config.redis.key_regex)
    except re.error as exc:
        raise ConfigError(f"invalid [redis] key_regex {config.redis.key_regex!r}: {exc}") from exc
    if config.kask.body_format not in ("JSON", "PHP", "legacy"):
        raise ConfigError(f"invalid [kask] body_format {config.kask.body_format!r}; use JSON, PHP or legacy "
                          "(the serialization_type MediaWiki's RESTBagOStuff is configured with)")
    kask_url = urlsplit(config.kask.url)
    if kask_url.scheme not in ("http", "https") or not kask_url.hostname:
        raise ConfigError(f"invalid [kask] url {config.kask.url!r}; expected http(s)://host:port/<base_uri>/")
    if kask_url.query or kask_url.fragment:
        raise ConfigError(f"[kask] url {config.kask.url!r} must not have a query or fragment: Kask rejects them")
    if config.capture.channel_mode not in ("keyspace", "keyevent"):
        raise ConfigError(f"invalid [capture] channel_mode {config.capture.channel_mode!r}; use keyspace or keyevent")
    if config.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"invalid [logging] level {config.logging.level!r}; use DEBUG, INFO, WARNING or ERROR")
    if config.logging.format not in ("text", "json"):
        raise ConfigError(f"invalid [logging] format {config.logging.format!r}; use text or json")
    for section_name in ("capture", "replicator", "backfill", "verify"):
        section = getattr(config, section_name)
        for item in dataclasses.fields(section):
            value = getattr(section, item.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"[{section_name}] {item.name} is {value}; it must not be negative")
    for name in ("read_batch_size", "max_pending_keys", "catchup_scan_count"):
        if getattr(config.capture, name) < 1:
            raise ConfigError(f"[capture] {name} must be at least 1")
    if config.replicator.max_in_flight < 1:
        raise ConfigError("[replicator] max_in_flight must be at least 1")
    for name in ("concurrency", "scan_count"):
        if getattr(config.verify, name) < 1:
            raise ConfigError(f"[verify] {name} must be at least 1")


def redis_db(url: str) -> int:
    return int(urlsplit(url).path.lstrip("/") or "0")


def redis_address(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"


def default_config_path() -> Path | None:
    configured = os.environ.get(CONFIG_PATH_ENV)
    return Path(configured) if configured else None
