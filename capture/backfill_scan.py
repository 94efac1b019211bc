"""The backfill's scan feed: SCAN one server, filter the keys, read them in pipelined batches.

A :class:`ScanFeed` runs in its own thread, so Redis executes the next SCAN
and read script while the main thread encodes and publishes the previous
batch. It hands the main thread a stream of messages through a bounded
queue: :class:`Started`, then :class:`Chunk` after :class:`Chunk`, possibly
:class:`Restarted`, and finally :class:`Finished` or :class:`Failed`.

A chunk carries ``cursor_after`` only when it is the last chunk of the keys
returned before that cursor, so the consumer can move its checkpoint to that
cursor once every earlier chunk is acknowledged.

The feed connects without redis-py's silent retries: a lost connection
surfaces here, the feed reconnects with backoff, and it compares the server's
run_id. A new run_id (a restart or a failover) makes the old cursor
meaningless, so the feed restarts the server's scan from cursor 0 and sends a
:class:`Restarted` message.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from capture.patterns import KeyFilter
from capture.reader import KeyReader, KeyState, server_version
from capture.sources import Source, connect, describe_connect_error, discover_primaries
from echoseen.config import Config
from echoseen.errors import ServiceUnavailable
from echoseen.ratelimit import TokenBucket
from echoseen.retry import Backoff

log = logging.getLogger(__name__)

# Errors after which the feed reconnects; BusyLoadingError (a server still
# loading its data after a restart) is a ConnectionError in redis-py.
RETRYABLE_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)

# Chunks waiting for the consumer; enough to keep Redis busy while the
# consumer publishes, small enough that a stop discards little work.
QUEUE_CHUNKS = 4

_CURSOR_BITS = 64


def scan_fraction(cursor: int) -> float:
    """Estimate the share of the keyspace a SCAN has covered when it returned ``cursor``.

    Redis advances the cursor by incrementing its bit-reversed value, so the
    reversed cursor read as a fraction of 2**64 grows from 0 to 1 over one
    full iteration, whatever the hash table size. Cursor 0 means "not
    started" here; callers treat a finished scan as 1.0 themselves.
    """
    if cursor <= 0:
        return 0.0
    reversed_cursor = int(format(cursor & (2**_CURSOR_BITS - 1), f"0{_CURSOR_BITS}b")[::-1], 2)
    return reversed_cursor / 2**_CURSOR_BITS


@dataclass(frozen=True)
class FeedSettings:
    """Settings of one scan: which keys to read, in what batches and how fast."""

    match: str | None
    filters: tuple[KeyFilter, ...]
    scan_count: int
    read_batch_size: int
    max_keys_per_s: float
    check_interval_s: float
    reconnect_timeout_s: float
    max_value_bytes: int
    force_pttl: bool
    # A chunk of fewer keys than read_batch_size still goes out after this long,
    # so a sparse selection keeps its checkpoint moving.
    emit_interval_s: float = 1.0


def feed_settings(config: Config, match: str | None, filters: tuple[KeyFilter, ...]) -> FeedSettings:
    backfill = config.backfill
    return FeedSettings(
        match=match, filters=filters, scan_count=backfill.scan_count, read_batch_size=backfill.read_batch_size,
        max_keys_per_s=backfill.max_keys_per_s, check_interval_s=backfill.checkpoint_interval_s,
        reconnect_timeout_s=backfill.reconnect_timeout_s, max_value_bytes=config.redis.max_value_bytes,
        force_pttl=config.redis.force_pttl,
        emit_interval_s=min(1.0, backfill.checkpoint_interval_s) if backfill.checkpoint_interval_s > 0 else 1.0)


@dataclass(frozen=True, slots=True)
class Started:
    """The feed connected. ``stale_run_id`` is the checkpoint's run_id when it no longer matches."""

    run_id: str
    version: str
    dbsize: int
    cursor: int
    stale_run_id: str | None


@dataclass(frozen=True, slots=True)
class Chunk:
    """Keys read in one pipelined batch, with the scan position they complete (if any)."""

    epoch: int
    run_id: str
    states: list[KeyState]
    scanned: int
    cursor_after: int | None
    final: bool
    fraction: float


@dataclass(frozen=True, slots=True)
class Restarted:
    """The server's run_id changed; every later chunk belongs to a scan that started again at cursor 0."""

    epoch: int
    old_run_id: str
    new_run_id: str
    dbsize: int


@dataclass(frozen=True, slots=True)
class Finished:
    """The scan reached cursor 0 and every chunk is in the queue."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The feed stopped on an error; the consumer raises it in the main thread."""

    error: BaseException


class _RunIdChanged(Exception):
    pass


class _Stopped(Exception):
    pass


class _Connection:
    __slots__ = ("client", "reader", "run_id", "version", "dbsize")

    def __init__(self, client: redis.Redis, reader: KeyReader, run_id: str, version: str, dbsize: int) -> None:
        self.client = client
        self.reader = reader
        self.run_id = run_id
        self.version = version
        self.dbsize = dbsize


def open_connection(config: Config, source: Source, settings: FeedSettings,
                    client_name: str = "echoseen-backfill") -> _Connection:
    """Connect without client-side retries, load the read script and read run_id and DBSIZE."""
    client = connect(config, source, retries=0, client_name=client_name)
    try:
        info = client.info("server")
        reader = KeyReader(client, source, settings.max_value_bytes, settings.force_pttl,
                           version=server_version(client))
        dbsize = int(client.dbsize())
    except BaseException:
        client.close()
        raise
    return _Connection(client, reader, str(info.get("run_id", "")), str(info.get("redis_version", "")), dbsize)


def split_evenly(keys: list[bytes], batch_size: int) -> list[list[bytes]]:
    """Split keys into the fewest batches of at most batch_size, of nearly equal sizes."""
    if len(keys) <= batch_size:
        return [keys]
    count = math.ceil(len(keys) / batch_size)
    size = math.ceil(len(keys) / count)
    return [keys[start:start + size] for start in range(0, len(keys), size)]


def scan_once(client: redis.Redis, cursor: int, match: str | None, count: int) -> tuple[int, list[bytes]]:
    if match is None:
        reply = client.execute_command("SCAN", cursor, "COUNT", count)
    else:
        reply = client.execute_command("SCAN", cursor, "MATCH", match, "COUNT", count)
    return int(reply[0]), reply[1]


def select_keys(keys: Sequence[bytes], filters: tuple[KeyFilter, ...]) -> list[bytes]:
    """Keep the keys every filter matches; SCAN MATCH is only a superset of the watched patterns."""
    selected = list(keys)
    for key_filter in filters:
        matches = key_filter.matches
        selected = [key for key in selected if matches(key)]
    return selected


class ScanFeed(threading.Thread):
    """One server's scan, run in a thread that feeds a bounded queue of messages."""

    def __init__(self, config: Config, source: Source, settings: FeedSettings, start_cursor: int,
                 expected_run_id: str) -> None:
        super().__init__(name=f"backfill-scan-{source.name}", daemon=True)
        self.config = config
        self.source = source
        self.settings = settings
        self.start_cursor = start_cursor
        self.expected_run_id = expected_run_id
        self.messages: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._halt = threading.Event()
        self._bucket = TokenBucket(settings.max_keys_per_s)
        self._epoch = 0

    def run(self) -> None:
        try:
            self._run()
        except _Stopped:
            pass
        except redis.RedisError as exc:
            # Errors that reconnecting cannot fix, such as NOPERM for an ACL user without SCAN or EVALSHA.
            text = str(exc)
            # redis-py drops the NOPERM and WRONGPASS prefixes from the text of the exceptions it maps them to.
            if isinstance(exc, (redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationError)) \
                    or any(code in text for code in ("NOPERM", "NOAUTH", "WRONGPASS")):
                message = describe_connect_error(self.source, exc)
            else:
                message = f"Redis {self.source.address} failed a command of the scan: {text}"
            self._hand_over(ServiceUnavailable(message))
        except BaseException as exc:  # noqa: BLE001 - every failure is handed to the main thread
            self._hand_over(exc)

    def _hand_over(self, error: BaseException) -> None:
        try:
            self._put(Failed(error))
        except _Stopped:
            pass

    def halt(self) -> None:
        """Ask the thread to stop at its next step; chunks already queued are dropped with the queue."""
        self._halt.set()

    def _put(self, message: object) -> None:
        while True:
            if self._halt.is_set():
                raise _Stopped()
            try:
                self.messages.put(message, timeout=0.2)
                return
            except queue.Full:
                continue

    def _connect_first(self) -> _Connection:
        try:
            return open_connection(self.config, self.source, self.settings)
        except RETRYABLE_ERRORS + (redis.RedisError,) as exc:
            raise ServiceUnavailable(describe_connect_error(self.source, exc)) from exc

    def _reconnect(self, error: BaseException, old: _Connection) -> _Connection:
        old.client.close()
        log.warning("lost the connection to Redis %s: %s; reconnecting", self.source.address, error)
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        deadline = time.monotonic() + self.settings.reconnect_timeout_s
        last_error: BaseException = error
        while True:
            delay_s = backoff.next_delay_s()
            if time.monotonic() + delay_s > deadline:
                raise ServiceUnavailable(
                    f"Redis {self.source.address} did not come back within {self.settings.reconnect_timeout_s:.0f} s "
                    f"([backfill] reconnect_timeout_s); last error: {last_error}. The checkpoint keeps the last "
                    "acknowledged position: start Redis and rerun with --resume") from last_error
            log.warning("reconnect attempt %d to Redis %s in %.1f s", backoff.attempt, self.source.address, delay_s)
            if self._halt.wait(delay_s):
                raise _Stopped()
            try:
                connection = open_connection(self.config, self.source, self.settings)
            except RETRYABLE_ERRORS as exc:
                last_error = exc
                continue
            log.info("reconnected to Redis %s (run_id %s)", self.source.address, connection.run_id)
            return connection

    def _restart(self, connection: _Connection, old_run_id: str) -> None:
        self._epoch += 1
        log.warning("Redis %s has a new run_id (%s, was %s): it restarted or failed over, so its SCAN cursor "
                    "is no longer valid; scanning %s again from the start", self.source.address,
                    connection.run_id, old_run_id, self.source.name)
        self._put(Restarted(self._epoch, old_run_id, connection.run_id, connection.dbsize))

    def _run(self) -> None:
        settings = self.settings
        connection = self._connect_first()
        cursor = self.start_cursor
        stale_run_id = None
        if cursor != 0 and connection.run_id != self.expected_run_id:
            stale_run_id = self.expected_run_id
            cursor = 0
        self._put(Started(connection.run_id, connection.version, connection.dbsize, cursor, stale_run_id))

        pending: list[bytes] = []
        scanned = 0
        emit_threshold = max(1, settings.read_batch_size // 2)
        last_emit = last_check = time.monotonic()
        while not self._halt.is_set():
            try:
                now = time.monotonic()
                if settings.check_interval_s > 0 and now - last_check >= settings.check_interval_s:
                    last_check = now
                    run_id = str(connection.client.info("server").get("run_id", ""))
                    if run_id != connection.run_id:
                        raise _RunIdChanged(run_id)
                    connection.dbsize = int(connection.client.dbsize())

                next_cursor, keys = scan_once(connection.client, cursor, settings.match, settings.scan_count)
                done = next_cursor == 0
                fraction = 1.0 if done else scan_fraction(next_cursor)
                if settings.max_keys_per_s > 0:
                    # Count the keys SCAN examined, estimated from the cursor's progress, so that
                    # MATCH filtering most keys out on the server does not hide the load.
                    examined = (fraction - scan_fraction(cursor)) * connection.dbsize
                    self._bucket.acquire(max(float(len(keys)), examined))
                if keys:
                    scanned += len(keys)
                    pending.extend(select_keys(keys, settings.filters))

                if done or len(pending) >= emit_threshold or now - last_emit >= settings.emit_interval_s:
                    self._emit(connection, pending, scanned, next_cursor, done, fraction)
                    pending = []
                    scanned = 0
                    last_emit = now
                cursor = next_cursor
                if done:
                    self._put(Finished())
                    return
            except RETRYABLE_ERRORS as exc:
                old_run_id = connection.run_id
                connection = self._reconnect(exc, connection)
                if connection.run_id != old_run_id:
                    self._restart(connection, old_run_id)
                    cursor, pending, scanned = 0, [], 0
            except _RunIdChanged:
                # The connection survived, but another server now answers at the address (after a failover
                # behind a virtual IP, for example). Reopen it so that the read script is loaded there.
                old_run_id = connection.run_id
                connection.client.close()
                try:
                    connection = open_connection(self.config, self.source, self.settings)
                except RETRYABLE_ERRORS as exc:
                    connection = self._reconnect(exc, connection)
                self._restart(connection, old_run_id)
                cursor, pending, scanned = 0, [], 0

    def _emit(self, connection: _Connection, pending: list[bytes], scanned: int, cursor_after: int, done: bool,
              fraction: float) -> None:
        run_id = connection.run_id
        if not pending:
            self._put(Chunk(self._epoch, run_id, [], scanned, cursor_after, done, fraction))
            return
        batches = split_evenly(pending, self.settings.read_batch_size)
        last_index = len(batches) - 1
        for index, keys in enumerate(batches):
            states = connection.reader.read(keys)
            last = index == last_index
            # Only the last chunk completes the scan position. The scanned count goes with it, so a retry
            # after a lost connection does not count the same SCAN reply twice.
            self._put(Chunk(self._epoch, run_id, states, scanned if last else 0,
                            cursor_after if last else None, done and last, fraction))


@dataclass(frozen=True)
class BaselineResult:
    """A bare SCAN plus pipelined read loop over one server, without Kafka."""

    scanned: int
    read: int
    elapsed_s: float

    @property
    def keys_per_s(self) -> float:
        return self.read / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {"scanned": self.scanned, "read": self.read, "elapsed_s": round(self.elapsed_s, 3),
                "keys_per_s": round(self.keys_per_s)}


def run_baseline(config: Config, source: Source, settings: FeedSettings, max_keys: int | None = None) -> BaselineResult:
    """Run SCAN plus KeyReader.read over one server in a plain loop, publishing nothing.

    This is what the snapshot's rate is compared against in benchmarks: the
    same SCAN, MATCH, client-side filter and read script, on one thread and
    with no rate limit. ``max_keys`` stops after that many scanned keys.
    """
    connection = open_connection(config, source, settings, client_name="echoseen-backfill-baseline")
    try:
        cursor = 0
        scanned = read = 0
        pending: list[bytes] = []
        started = time.perf_counter()
        while True:
            cursor, keys = scan_once(connection.client, cursor, settings.match, settings.scan_count)
            scanned += len(keys)
            pending.extend(select_keys(keys, settings.filters))
            finished = cursor == 0 or (max_keys is not None and scanned >= max_keys)
            if len(pending) >= settings.read_batch_size or (finished and pending):
                for batch in split_evenly(pending, settings.read_batch_size):
                    read += len(connection.reader.read(batch))
                pending = []
            if finished:
                break
        return BaselineResult(scanned, read, time.perf_counter() - started)
    finally:
        connection.client.close()


def drive_feed(feed: ScanFeed, handle: Callable[[object], None], tick: Callable[[], None],
               stop: threading.Event) -> bool:
    """Run a feed, pass each message to ``handle`` and call ``tick`` between them.

    Returns True when the feed finished its scan and False when ``stop`` was
    set first. A feed failure is raised here, in the caller's thread.
    """
    feed.start()
    try:
        while not stop.is_set():
            try:
                message = feed.messages.get(timeout=0.2)
            except queue.Empty:
                tick()
                continue
            if isinstance(message, Failed):
                raise message.error
            handle(message)
            tick()
            if isinstance(message, Finished):
                return True
        return False
    finally:
        feed.halt()
        feed.join(timeout=10)
        if feed.is_alive():
            log.warning("the scan thread of %s did not stop within 10 s", feed.source.name)


def run_baselines(config: Config, match: str | None, filters: tuple[KeyFilter, ...]) -> list[BaselineResult]:
    """Run :func:`run_baseline` over every source with the [backfill] batch settings; for benchmarks."""
    settings = feed_settings(config, match, filters)
    return [run_baseline(config, source, settings) for source in discover_primaries(config)]
