"""Compare Redis and Kask key by key: the gate before Redis is decommissioned.

Scans every source of [redis] servers (every primary with [redis] cluster)
for the watched keys ([redis] key_patterns), or only those of --wiki or
--pattern, or a random --sample of them. Each key is read atomically from
Redis with the key reader and from Kask with the same client and body codec
([kask] body_format and HMAC key) the replicator uses, and lands in one
category:

  equal, kask_newer (fine while MediaWiki writes Kask first),
  placeholder_in_redis_missing_in_kask (MediaWiki reads both as "nothing seen"),
  older_than_cutoff (with --cutoff: Redis seen time before it, so not copied),
  redis_key_gone (expired or deleted between scan and comparison),
  unaddressable (a key Kask cannot store, such as one containing '/'),
  bad_value_in_redis (reported; bad with --bad-values-fail or [verify] bad_values_fail),
  kask_older, missing_in_kask, undecodable_in_kask (bad).

Bad keys are read again on both sides after [verify] recheck_delay_s, for
[verify] recheck_rounds rounds, so writes still in flight settle; what
remains is reported with up to [verify] sample_keys keys per category.
Reads are limited to [verify] max_keys_per_s with [verify] concurrency Kask
requests in flight. Progress goes to the terminal, or to the log every
[verify] progress_log_interval_s seconds. The result is stored as the
``verify/last`` document of [kafka] state_topic, where `echoseen status`
shows it.

Exit status: 0 when nothing bad remains, 1 when something does, 2 for
invalid options, 3 when Redis, Kask or Kafka is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from confluent_kafka import KafkaException, Producer

from capture import state as state_store
from capture.backfill_plan import Plan, build_plan
from capture.reader import KeyReader, KeyState
from capture.sources import Source, connect, describe_connect_error, discover_primaries, ping
from echoseen.config import Config
from echoseen.errors import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, ConfigError, EchoseenError, ServiceUnavailable
from echoseen.events import key_text
from echoseen.kask_body import ReadBack
from echoseen.ratelimit import TokenBucket
from echoseen.retry import Backoff
from operations import kafkaops
from operations.compare import ALWAYS_BAD, MEANINGS, Category, Verdict, bad_categories, classify, redis_side
from operations.output import (add_json_argument, add_timeout_argument, non_negative_float, non_negative_int,
                               print_json, render_table)
from replicator.apply import codec_from_config
from replicator.kask_client import KaskClient, KaskTransportError, unaddressable_reason

log = logging.getLogger(__name__)

# Bad keys kept in memory for rechecking. Beyond this the run is failing by a wide
# margin anyway (a Kask that was never backfilled), and the rest are counted unrechecked.
MAX_RECHECK_KEYS = 100_000
KASK_ATTEMPTS = 4


@dataclass(frozen=True)
class Options:
    plan: Plan
    scope: str
    sample_fraction: float | None
    seed: int | None
    bad_values_fail: bool
    recheck_rounds: int
    recheck_delay_s: float
    max_keys_per_s: float
    concurrency: int
    sample_keys: int
    store: bool
    timeout_s: float

    @property
    def cutoff_ts_mw(self) -> str | None:
        return self.plan.cutoff_ts_mw or None


@dataclass
class Result:
    started_wall_ms: int
    scope: str
    sources: list[str]
    finished_wall_ms: int = 0
    scanned: int = 0
    compared: int = 0
    counts: Counter = field(default_factory=Counter)
    samples: dict[Category, list[dict[str, Any]]] = field(default_factory=dict)
    rechecked_rounds: int = 0
    not_rechecked: int = 0
    bad_values_fail: bool = False

    @property
    def bad_categories(self) -> frozenset[Category]:
        return bad_categories(self.bad_values_fail)

    @property
    def bad(self) -> int:
        return sum(self.counts[category] for category in self.bad_categories)

    @property
    def passed(self) -> bool:
        return self.bad == 0

    def add_sample(self, category: Category, key: bytes, verdict: Verdict, limit: int) -> None:
        if category is Category.EQUAL:
            return
        samples = self.samples.setdefault(category, [])
        if len(samples) < limit:
            samples.append({"key": key_text(key), "redis": verdict.redis_seen_time, "kask": verdict.kask_seen_time,
                            "detail": verdict.detail})

    def document(self) -> dict[str, Any]:
        """Build the verify document stored in the state topic (fields described in capture.state)."""
        return {
            "kind": "verify",
            "started_wall_ms": self.started_wall_ms,
            "finished_wall_ms": self.finished_wall_ms,
            "passed": self.passed,
            "bad": self.bad,
            "categories": {category.value: self.counts[category] for category in Category if self.counts[category]},
            "scope": self.scope,
            "sources": self.sources,
            "scanned": self.scanned,
            "compared": self.compared,
            "recheck_rounds": self.rechecked_rounds,
            "not_rechecked": self.not_rechecked,
            "bad_values_fail": self.bad_values_fail,
            "samples": {category.value: samples for category, samples in self.samples.items()},
            "host": socket.gethostname(),
        }


class Progress:
    """A live line on a terminal, or a log line per interval otherwise."""

    def __init__(self, interval_s: float) -> None:
        self.tty = sys.stderr.isatty()
        self.interval_s = 0.5 if self.tty else interval_s
        self.started = time.monotonic()
        self.last = self.started

    def update(self, result: Result, stage: str, to_recheck: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval_s:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-6)
        line = (f"{stage}: {result.scanned} keys scanned, {result.compared} compared "
                f"({result.compared / elapsed:.0f}/s), {result.bad} bad, {to_recheck} to recheck")
        if self.tty:
            sys.stderr.write("\r" + line.ljust(100))
            sys.stderr.flush()
        else:
            log.info("verify progress: %s", line)

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def options_from_args(args: argparse.Namespace, config: Config) -> Options:
    # The backfill's plan selects keys and applies the cutoff, so verify checks exactly what a backfill copies.
    plan = build_plan(config, args.wiki, args.pattern, args.cutoff)
    scope_parts = []
    if plan.wikis:
        scope_parts.append("wikis " + ",".join(plan.wikis))
    if plan.patterns:
        scope_parts.append("patterns " + ",".join(plan.patterns))
    if not scope_parts:
        scope_parts.append("all watched keys")
    if args.sample is not None:
        if not 0 < args.sample <= 1:
            raise ConfigError(f"invalid --sample {args.sample}: give a fraction greater than 0 and at most 1")
        scope_parts.append(f"sample {args.sample:g}")
    if plan.cutoff_text:
        scope_parts.append(f"cutoff {plan.cutoff_text}")
    verify = config.verify
    return Options(
        plan=plan, scope="; ".join(scope_parts), sample_fraction=args.sample, seed=args.seed,
        bad_values_fail=args.bad_values_fail or verify.bad_values_fail,
        recheck_rounds=verify.recheck_rounds if args.recheck_rounds is None else args.recheck_rounds,
        recheck_delay_s=verify.recheck_delay_s if args.recheck_delay is None else args.recheck_delay,
        max_keys_per_s=verify.max_keys_per_s if args.max_keys_per_s is None else args.max_keys_per_s,
        concurrency=verify.concurrency, sample_keys=verify.sample_keys, store=not args.no_store,
        timeout_s=args.timeout_s)


class Verifier:
    """One verify run: scan, compare, recheck."""

    def __init__(self, config: Config, options: Options, kask: KaskClient) -> None:
        self.config = config
        self.options = options
        self.kask = kask
        self.codec = codec_from_config(config)
        self.rechecked = bad_categories(options.bad_values_fail)
        self.random = random.Random(options.seed)
        self.bucket = TokenBucket(options.max_keys_per_s)
        self.progress = Progress(config.verify.progress_log_interval_s)
        self.recheck: dict[tuple[Source, bytes], Verdict] = {}
        self.result: Result | None = None

    def selected(self, key: bytes) -> bool:
        if not all(key_filter.matches(key) for key_filter in self.options.plan.filters):
            return False
        if self.options.sample_fraction is not None and self.random.random() >= self.options.sample_fraction:
            return False
        return True

    async def run(self, sources: Sequence[Source]) -> Result:
        self.result = Result(int(time.time() * 1000), self.options.scope, [source.name for source in sources],
                             bad_values_fail=self.options.bad_values_fail)
        for source in sources:
            await self.scan_source(source)
        for round_number in range(1, self.options.recheck_rounds + 1):
            if not self.recheck:
                break
            log.info("recheck round %d of %d: %d keys in %.1f s", round_number, self.options.recheck_rounds,
                     len(self.recheck), self.options.recheck_delay_s)
            await asyncio.sleep(self.options.recheck_delay_s)
            await self.recheck_round()
            self.result.rechecked_rounds = round_number
        self.finish()
        return self.result

    async def scan_source(self, source: Source) -> None:
        client = connect(self.config, source, client_name="echoseen-verify",
                         socket_timeout_s=max(self.options.timeout_s, self.config.redis.socket_timeout_s))
        try:
            reader = await asyncio.to_thread(KeyReader, client, source, self.config.redis.max_value_bytes,
                                             self.config.redis.force_pttl)
            match = self.options.plan.match
            cursor = 0
            pending: asyncio.Task | None = None
            while True:
                cursor, keys = await asyncio.to_thread(client.scan, cursor, match, self.config.verify.scan_count)
                self.result.scanned += len(keys)
                keys = [key for key in keys if self.selected(key)]
                if keys:
                    await self.bucket.acquire_async(len(keys))
                    states = await asyncio.to_thread(reader.read, keys)
                    # The previous batch's Kask reads ran while this batch was scanned and read from Redis.
                    if pending is not None:
                        await pending
                    pending = asyncio.create_task(self.compare_batch(source, states))
                self.progress.update(self.result, f"scanning {source.name}", len(self.recheck))
                if cursor == 0:
                    break
            if pending is not None:
                await pending
        except (redis.RedisError, OSError) as exc:
            raise ServiceUnavailable(describe_connect_error(source, exc)) from exc
        finally:
            client.close()
        self.progress.update(self.result, f"scanned {source.name}", len(self.recheck), force=True)

    async def compare_batch(self, source: Source, states: list[KeyState]) -> None:
        verdicts = await asyncio.gather(*(self.compare(state) for state in states))
        for state, verdict in zip(states, verdicts):
            self.result.compared += 1
            if verdict.category in self.rechecked and self.options.recheck_rounds > 0:
                if len(self.recheck) < MAX_RECHECK_KEYS:
                    self.recheck[(source, state.key)] = verdict
                    continue
                self.result.not_rechecked += 1
            self.count(state.key, verdict)

    def count(self, key: bytes, verdict: Verdict) -> None:
        self.result.counts[verdict.category] += 1
        self.result.add_sample(verdict.category, key, verdict, self.options.sample_keys)

    async def compare(self, state: KeyState) -> Verdict:
        side = redis_side(state, self.config.redis.max_value_bytes)
        if isinstance(side, Verdict):
            return side
        reason = unaddressable_reason(state.key, self.config.kask.max_key_bytes)
        if reason is not None:
            return Verdict(Category.UNADDRESSABLE, side.seen_time, None, reason)
        stored = await self.read_kask(state.key)
        return classify(side.seen_time, stored, self.options.cutoff_ts_mw)

    async def read_kask(self, key: bytes) -> ReadBack | None:
        """GET one key, retrying timeouts and 5xx a few times; ServiceUnavailable when Kask keeps failing."""
        backoff = Backoff(base_s=0.2, cap_s=2.0)
        problem = ""
        for attempt in range(1, KASK_ATTEMPTS + 1):
            try:
                response = await self.kask.get(key)
            except KaskTransportError as exc:
                problem = str(exc)
            else:
                if response.status in (200, 404):
                    return response.read_back(self.codec)
                problem = f"GET returned status {response.status}: {response.problem_detail()}"
                if response.status < 500:
                    raise EchoseenError(f"Kask at {self.config.kask.url} rejected the read of {key_text(key)!r}: "
                                        f"{problem}; check [kask] url (it must end with the service's base_uri)")
            if attempt < KASK_ATTEMPTS:
                await asyncio.sleep(backoff.next_delay_s())
        raise ServiceUnavailable(f"Kask at {self.config.kask.url} ([kask] url) failed {KASK_ATTEMPTS} times for key "
                                 f"{key_text(key)!r}: {problem}")

    async def recheck_round(self) -> None:
        by_source: dict[Source, list[bytes]] = {}
        for source, key in self.recheck:
            by_source.setdefault(source, []).append(key)
        still_bad: dict[tuple[Source, bytes], Verdict] = {}
        for source, keys in by_source.items():
            client = connect(self.config, source, client_name="echoseen-verify")
            try:
                reader = await asyncio.to_thread(KeyReader, client, source, self.config.redis.max_value_bytes,
                                                 self.config.redis.force_pttl)
                batch_size = self.config.verify.scan_count
                for start in range(0, len(keys), batch_size):
                    batch = keys[start:start + batch_size]
                    await self.bucket.acquire_async(len(batch))
                    states = await asyncio.to_thread(reader.read, batch)
                    verdicts = await asyncio.gather(*(self.compare(state) for state in states))
                    for state, verdict in zip(states, verdicts):
                        if verdict.category in self.rechecked:
                            still_bad[(source, state.key)] = verdict
                        else:
                            self.count(state.key, verdict)
                    self.progress.update(self.result, "rechecking", len(self.recheck))
            except (redis.RedisError, OSError) as exc:
                raise ServiceUnavailable(describe_connect_error(source, exc)) from exc
            finally:
                client.close()
        self.recheck = still_bad

    def finish(self) -> None:
        for (source, key), verdict in self.recheck.items():
            self.count(key, verdict)
        self.recheck = {}
        self.result.finished_wall_ms = int(time.time() * 1000)
        self.progress.finish()


async def check_kask(kask: KaskClient, config: Config) -> None:
    try:
        response = await kask.healthz()
    except KaskTransportError as exc:
        if exc.certificate_rejected:
            raise ServiceUnavailable(f"Kask at {config.kask.url} ([kask] url) presented a certificate that failed "
                                     f"verification: {exc.detail}; set [kask] ca_file to the CA bundle that signed "
                                     "Kask's certificate") from exc
        raise ServiceUnavailable(f"cannot reach Kask at {config.kask.url} ([kask] url): {exc.detail}") from exc
    if response.status != 200:
        raise ServiceUnavailable(f"Kask at {config.kask.url} ([kask] url) returned status {response.status} for "
                                 "/healthz")


async def verify(config: Config, options: Options) -> Result:
    """Run a verify with the given options and return its result; stores nothing."""
    sources = discover_primaries(config)
    for source in sources:
        await asyncio.to_thread(ping, config, source)
    # Short timeouts for the checks; the comparison itself uses [kask] timeout_s.
    async with KaskClient(config.kask, max_in_flight=options.concurrency) as kask:
        await asyncio.wait_for(check_kask(kask, config), timeout=options.timeout_s + 1)
        verifier = Verifier(config, options, kask)
        return await verifier.run(sources)


def store_result(config: Config, result: Result, timeout_s: float) -> None:
    """Write the result as the verify/last document of the state topic and wait for the acknowledgement."""
    settings = kafkaops.tool_settings(config, timeout_s)
    settings.update({"acks": "all", "message.timeout.ms": max(5000, int(timeout_s * 2000))})
    producer = Producer(settings)
    errors: list[str] = []

    def delivered(error, message) -> None:
        if error is not None:
            errors.append(str(error))

    try:
        producer.produce(config.kafka.state_topic, key=state_store.VERIFY_KEY.encode("utf-8"),
                         value=state_store.encode(result.document()), on_delivery=delivered)
    except (KafkaException, BufferError) as exc:
        raise kafkaops.unreachable(config, exc) from exc
    remaining = producer.flush(max(timeout_s * 2, 5.0))
    if remaining or errors:
        raise ServiceUnavailable(f"storing the verify result in {config.kafka.state_topic!r} failed: "
                                 f"{errors[0] if errors else 'not acknowledged in time'}")


def render(result: Result, config: Config) -> str:
    duration_s = (result.finished_wall_ms - result.started_wall_ms) / 1000
    lines = [f"verify of {result.scope} on {len(result.sources)} Redis source(s) ({', '.join(result.sources)}) "
             f"against {config.kask.url}: {result.compared} keys compared ({result.scanned} scanned) in "
             f"{duration_s:.1f} s, {result.rechecked_rounds} recheck round(s)"]
    rows = []
    for category in Category:
        if result.counts[category] or category in ALWAYS_BAD or category is Category.EQUAL:
            verdict = "BAD" if category in result.bad_categories else "ok"
            rows.append((category.value, result.counts[category], verdict, MEANINGS[category]))
    lines.append(render_table(("CATEGORY", "KEYS", "VERDICT", "MEANING"), rows))
    if result.not_rechecked:
        lines.append(f"{result.not_rechecked} bad keys beyond the first {MAX_RECHECK_KEYS} were not rechecked")
    for category in Category:
        samples = result.samples.get(category)
        if not samples:
            continue
        lines.append(f"sample keys, {category.value}:")
        for sample in samples:
            detail = f" ({sample['detail']})" if sample["detail"] else ""
            lines.append(f"  {sample['key']}  redis {sample['redis'] or '-'}  kask {sample['kask'] or '-'}{detail}")
    if result.passed:
        lines.append("PASSED: nothing bad remains")
    else:
        bad = ", ".join(f"{category.value}={result.counts[category]}" for category in sorted(result.bad_categories)
                        if result.counts[category])
        lines.append(f"FAILED: {result.bad} bad keys remain ({bad})")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wiki", action="append", metavar="DBNAME",
                        help="compare only this wiki's keys (repeatable); 'global' for cross-wiki users")
    parser.add_argument("--pattern", action="append", metavar="GLOB",
                        help="compare only watched keys matching this Redis glob pattern (repeatable)")
    parser.add_argument("--sample", type=float, metavar="FRACTION",
                        help="compare a random fraction of the selected keys, e.g. 0.01 for 1%% (default: all)")
    parser.add_argument("--seed", type=int, help="random seed of --sample, to repeat the same selection")
    parser.add_argument("--cutoff", metavar="DATE",
                        help="ISO 8601 date or datetime (UTC without a zone): keys whose Redis seen time is "
                             "before it are reported as older_than_cutoff, not bad (default: [backfill] cutoff)")
    parser.add_argument("--bad-values-fail", action="store_true",
                        help="count bad values in Redis as bad (default: [verify] bad_values_fail)")
    parser.add_argument("--recheck-rounds", type=non_negative_int, metavar="N",
                        help="rounds of rechecking bad keys (default: [verify] recheck_rounds)")
    parser.add_argument("--recheck-delay", type=non_negative_float, metavar="SECONDS",
                        help="delay before each recheck round, in seconds (default: [verify] recheck_delay_s)")
    parser.add_argument("--max-keys-per-s", type=non_negative_float, metavar="RATE",
                        help="rate limit in keys per second, 0 for none (default: [verify] max_keys_per_s)")
    parser.add_argument("--no-store", action="store_true",
                        help="do not store the result in the state topic (Kafka is then not needed)")
    add_json_argument(parser)
    add_timeout_argument(parser)


def run(args: argparse.Namespace, config: Config) -> int:
    options = options_from_args(args, config)
    if options.store:
        # Fail before a long comparison, not after it, when the result cannot be stored.
        admin = kafkaops.connect_admin(config, options.timeout_s)
        try:
            kafkaops.partition_ids(config, admin, config.kafka.state_topic, options.timeout_s,
                                   setting="[kafka] state_topic")
        except kafkaops.TopicNotFound as exc:
            raise ConfigError(f"{exc}, or pass --no-store to compare without storing the result") from exc
    result = asyncio.run(verify(config, options))

    store_error = None
    if options.store:
        try:
            store_result(config, result, options.timeout_s)
        except ServiceUnavailable as exc:
            store_error = str(exc)
            log.error("%s", exc)

    if args.json:
        document = result.document()
        document["stored"] = options.store and store_error is None
        print_json(document)
    else:
        print(render(result, config))
    log.info("verify finished: %s, %d keys compared, %d bad", "passed" if result.passed else "failed",
             result.compared, result.bad)
    if not result.passed:
        return EXIT_FAILED
    return EXIT_UNAVAILABLE if store_error else EXIT_OK
