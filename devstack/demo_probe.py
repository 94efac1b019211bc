"""Load and measurement for the demo: live writes counted per key, and an end-to-end delay probe.

The probe measures what a user would notice: it writes a seen time "now" to
one of its own keys in Redis, as Echo does, and polls Kask until MediaWiki
would read that seen time (or a newer one) back. The delay runs from just
before the SETEX to the first GET that returns it, so it covers the capture,
Kafka, the replicator and Kask. Each probe polls every tenth of its elapsed
time (at least 5 ms, at most 2 s), so a measured delay exceeds the true one
by at most about 10 % plus one GET.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import redis

from devstack.keyspace import ECHO_TTL_S
from echoseen import echo_value
from echoseen.config import Config
from replicator.apply import codec_from_config
from replicator.kask_client import KaskClient, KaskTransportError

log = logging.getLogger(__name__)

POLL_MIN_S = 0.005
POLL_MAX_S = 2.0
POLL_SHARE = 0.1


# ---------------------------------------------------------------------------
# Live writes counted per key
# ---------------------------------------------------------------------------

class _CountingPipeline:
    """Wraps a redis-py pipeline and counts the keys of the SETEX commands queued on it."""

    def __init__(self, pipeline: redis.client.Pipeline, counts: Counter) -> None:
        self._pipeline = pipeline
        self._counts = counts

    def execute_command(self, *args, **kwargs):
        if args and str(args[0]).upper() == "SETEX":
            self._counts[args[1]] += 1
        return self._pipeline.execute_command(*args, **kwargs)

    def execute(self, *args, **kwargs):
        return self._pipeline.execute(*args, **kwargs)


class CountingClient:
    """A Redis client for LiveWriter that counts the writes to each key.

    LiveWriter reports only the last value of each key and the total. The
    per-key counts tell how many writes a key's final value in Kask covers.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self.writes_per_key: Counter = Counter()

    def pipeline(self, transaction: bool = True) -> _CountingPipeline:
        return _CountingPipeline(self._client.pipeline(transaction=transaction), self.writes_per_key)


# ---------------------------------------------------------------------------
# The delay probe
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeResult:
    phase: str
    key: str
    seen_time: str
    delay_s: float | None  # None: not visible in Kask before the probe gave up


class DelayProbe:
    """Write one probe key every ``interval_s`` and time how long until Kask returns its seen time.

    Runs an asyncio loop in a thread of its own. At most ``max_outstanding``
    probes poll at once: while the replicator works through a backlog, new
    probes wait instead of adding GET load. ``phase`` labels the probes
    started from then on.
    """

    def __init__(self, config: Config, redis_client: redis.Redis, keys: Sequence[str], interval_s: float = 0.5,
                 max_outstanding: int = 10, timeout_s: float = 1800.0) -> None:
        if not keys:
            raise ValueError("keys is empty; the probe needs keys that no other writer touches")
        self.config = config
        self.redis = redis_client
        self.keys = list(keys)
        self.interval_s = interval_s
        self.max_outstanding = max_outstanding
        self.timeout_s = timeout_s
        self.phase = "start"
        self.results: list[ProbeResult] = []
        self.skipped = 0
        self._next_key = 0
        self._stop_launching = threading.Event()
        self._give_up_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="delay-probe", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> "DelayProbe":
        self._thread.start()
        return self

    def stop(self, wait_s: float) -> None:
        """Stop starting probes, give the outstanding ones up to ``wait_s`` to finish, then end the thread."""
        self._give_up_at = time.monotonic() + wait_s
        self._stop_launching.set()
        self._thread.join(timeout=wait_s + 30)
        if self._error is not None:
            raise RuntimeError(f"the delay probe failed: {self._error}") from self._error

    def delays(self, phase: str) -> list[float]:
        return sorted(result.delay_s for result in self.results
                      if result.phase == phase and result.delay_s is not None)

    def unfinished(self, phase: str) -> int:
        return sum(1 for result in self.results if result.phase == phase and result.delay_s is None)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self._error = exc

    async def _main(self) -> None:
        codec = codec_from_config(self.config)
        outstanding: set[asyncio.Task] = set()
        async with KaskClient(self.config.kask, max_in_flight=self.max_outstanding) as kask:
            while not self._stop_launching.is_set():
                if len(outstanding) < self.max_outstanding:
                    task = asyncio.create_task(self._probe_one(kask, codec, self.phase))
                    outstanding.add(task)
                    task.add_done_callback(outstanding.discard)
                else:
                    self.skipped += 1
                await asyncio.sleep(self.interval_s)

            while outstanding and time.monotonic() < (self._give_up_at or 0):
                await asyncio.sleep(0.05)
            for task in list(outstanding):
                task.cancel()
            if outstanding:
                await asyncio.wait(outstanding)

    async def _probe_one(self, kask: KaskClient, codec, phase: str) -> None:
        key = self.keys[self._next_key % len(self.keys)]
        self._next_key += 1
        seen_time = echo_value.ts_mw_from_datetime(datetime.now(timezone.utc))
        value = echo_value.encode(seen_time)

        started = time.monotonic()
        # SETEX as Echo sends it; the call takes well under a millisecond on loopback.
        await asyncio.to_thread(self.redis.execute_command, "SETEX", key, ECHO_TTL_S, value)
        result = ProbeResult(phase, key, seen_time, None)
        try:
            while time.monotonic() - started < self.timeout_s:
                try:
                    stored = await kask.read(key.encode(), codec)
                except KaskTransportError as exc:
                    log.debug("probe GET of %s failed: %s", key, exc)
                    stored = None
                if stored is not None and stored.seen_time is not None and stored.seen_time >= seen_time:
                    result = ProbeResult(phase, key, seen_time, time.monotonic() - started)
                    return
                elapsed_s = time.monotonic() - started
                await asyncio.sleep(min(POLL_MAX_S, max(POLL_MIN_S, elapsed_s * POLL_SHARE)))
        finally:
            # Also on cancellation, so a probe that never showed up in Kask is counted as unfinished.
            self.results.append(result)


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending list; None when it is empty."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * fraction // 1))
    return sorted_values[int(rank) - 1]


def histogram_percentiles(buckets: Sequence[tuple[float, float]], fractions: Sequence[float]) -> dict[float, float]:
    """Return the bucket upper bound that contains each percentile of a cumulative Prometheus histogram.

    ``buckets`` are (upper bound, cumulative count) pairs in ascending order,
    the last one with bound +Inf. Each result means "at most this many seconds".
    """
    total = buckets[-1][1] if buckets else 0
    answers = {}
    for fraction in fractions:
        if total == 0:
            continue
        needed = total * fraction
        for bound, count in buckets:
            if count >= needed:
                answers[fraction] = bound
                break
    return answers
