"""Benchmark the replicator's apply rate into Kask against a raw aiohttp client doing the same requests.

  .venv/bin/python bench/bench_replicator.py --keys 1000000

Steps:
1. Produce --keys snapshot events, one per new key, into a fresh topic, so
   every record costs the replicator a GET (404) and a POST.
2. Baseline: a raw aiohttp client (the replicator's HTTP library) sends the
   same GET-then-POST pairs for --baseline-keys other new keys, with as many
   requests in flight as [replicator] max_in_flight, without Kafka.
3. `echoseen replicate` consumes the topic; its rate is records per second
   between 5 % and 95 % of the records (echoseen_replicator_records_total),
   so the consumer group join and the tail do not count.
4. The baseline again, because Cassandra slows down as its data grows.

The CPU time of the replicator, Kask, Cassandra and Kafka during each phase
shows where the time goes. The result is one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import time
from urllib.parse import quote

import aiohttp
from confluent_kafka import Producer
from yarl import URL

import common

from echoseen import events
from echoseen.kafka import producer_settings
from echoseen.kask_body import BodyCodec

log = logging.getLogger("bench.replicator")

TARGET_RATIO = 0.7
SEEN_TIME = "20261201120000"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="records (new keys) to apply (default %(default)s)")
    parser.add_argument("--baseline-keys", type=int, default=100_000,
                        help="new keys of each baseline run (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="[replicator] max_in_flight, also the baseline's concurrency (default: the built-in "
                             "default of the setting)")
    parser.add_argument("--partitions", type=int, default=12, help="partitions of the event topic (default %(default)s)")
    common.add_stack_arguments(parser, kask=True)
    return parser.parse_args(argv)


def echo_key(wiki: str, user_id: int) -> bytes:
    return f"{wiki}:echo:seen:alert:time:{user_id}".encode()


def produce_events(config, wiki: str, count: int) -> dict:
    """Produce ``count`` snapshot events of new keys; return the count and the seconds it took."""
    producer = Producer(producer_settings(config, **{"client.id": "echoseen-bench-producer"}))
    value = f's:14:"{SEEN_TIME}";'.encode()
    started = time.monotonic()
    failures = []

    def delivered(error, message) -> None:
        if error is not None:
            failures.append(str(error))

    for index in range(1, count + 1):
        event = events.SeenTimeEvent(
            op=events.OP_UPSERT, key=echo_key(wiki, index), value=value, seen_time=SEEN_TIME, value_error=None,
            expire_at_ms=None, version_us=int(time.time() * 1_000_000), origin=events.ORIGIN_SNAPSHOT,
            notification=None, source_server="127.0.0.1:6379", source_db=0, source_run_id="bench")
        key, payload = events.encode(event)
        while True:
            try:
                producer.produce(config.kafka.topic, value=payload, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        if index % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    if remaining or failures:
        raise RuntimeError(f"producing the benchmark events failed: {remaining} unacknowledged, "
                           f"errors {failures[:3]}")
    elapsed_s = time.monotonic() - started
    return {"records": count, "elapsed_s": round(elapsed_s, 1), "records_per_s": round(count / elapsed_s)}


async def raw_client_run(base_url: str, wiki: str, count: int, concurrency: int) -> dict:
    """GET then POST for ``count`` new keys with ``concurrency`` requests in flight, straight through aiohttp."""
    body = BodyCodec().encode(SEEN_TIME)
    base = base_url if base_url.endswith("/") else base_url + "/"
    headers = {"Content-Type": "application/octet-stream"}
    statuses: dict[str, int] = {}
    next_index = iter(range(1, count + 1))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def worker() -> None:
            for index in next_index:
                url = URL(base + quote(echo_key(wiki, index), safe=""), encoded=True)
                async with session.get(url) as response:
                    await response.read()
                    label = f"GET {response.status}"
                    statuses[label] = statuses.get(label, 0) + 1
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    label = f"POST {response.status}"
                    statuses[label] = statuses.get(label, 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed_s = time.monotonic() - started
    return {"keys": count, "elapsed_s": round(elapsed_s, 2), "keys_per_s": round(count / elapsed_s),
            "statuses": statuses}


def run_baseline(stack: common.Stack, wiki: str, count: int, concurrency: int) -> dict:
    pids = stack.pids()
    pids["bench"] = os.getpid()
    cpu_before = common.cpu_snapshot(pids)
    started = time.monotonic()
    result = asyncio.run(raw_client_run(stack.kask_url, wiki, count, concurrency))
    result["cpu"] = common.cpu_delta(cpu_before, common.cpu_snapshot(pids), time.monotonic() - started)
    return result


def run_replicator(stack: common.Stack, config, total: int) -> dict:
    """Run the replicator until it finished ``total`` records; return its rate and resource use."""
    replicator = common.Daemon(stack.workdir, "replicate", config)
    progress: list[tuple[float, float]] = []
    with common.ProcessSampler(interval_s=1.0) as sampler:
        replicator.start()
        sampler.watch("replicator", replicator.pid)
        ready_s = replicator.wait_ready(timeout_s=120)
        pids = {"replicator": replicator.pid, **stack.pids()}
        cpu_before = common.cpu_snapshot(pids)
        started = time.monotonic()
        done = 0.0
        while done < total:
            if replicator.process.poll() is not None:
                raise RuntimeError(f"the replicator exited with {replicator.process.returncode}; log "
                                   f"{replicator.log_path}:\n{replicator.log_tail()}")
            time.sleep(0.5)
            samples = replicator.samples()
            done = common.metric_sum(samples, "echoseen_replicator_records_total")
            progress.append((time.monotonic() - started, done))
        elapsed_s = time.monotonic() - started
        cpu = common.cpu_delta(cpu_before, common.cpu_snapshot(pids), elapsed_s)
        samples = replicator.samples()
        status = replicator.stop()
        memory = sampler.summaries().get("replicator", {})

    outcomes = {labels["outcome"]: int(value) for name, labels, value in samples
                if name == "echoseen_replicator_records_total" and value}
    kask_latency = {}
    for method in ("GET", "POST"):
        kask_latency[method] = common.histogram_summary(common.histogram_buckets(
            samples, "echoseen_replicator_kask_request_duration_seconds", method=method))
    steady = _steady_rate(progress, total)
    return {
        "records": total,
        "ready_s": round(ready_s, 1),
        "elapsed_s": round(elapsed_s, 1),
        "records_per_s_overall": round(total / elapsed_s),
        "records_per_s_steady": steady,
        "outcomes": outcomes,
        "kask_request_latency": kask_latency,
        "exit_status": status,
        "cpu": cpu,
        "cpu_ms_per_record": round(1000 * cpu.get("replicator", {}).get("cpu_s", 0) / total, 3),
        "process": memory,
        "memory_verdict": common.memory_verdict(memory),
    }


def _steady_rate(progress: list[tuple[float, float]], total: int) -> float | None:
    """Records per second between the samples that passed 5 % and 95 % of ``total``."""
    low = next((sample for sample in progress if sample[1] >= 0.05 * total), None)
    high = next((sample for sample in progress if sample[1] >= 0.95 * total), None)
    if low is None or high is None or high[0] <= low[0]:
        return None
    return round((high[1] - low[1]) / (high[0] - low[0]))


def spot_check(stack: common.Stack, wiki: str, total: int, sample_size: int = 200) -> dict:
    """Read a random sample of the replicated keys back from Kask and compare the bodies."""
    expected = BodyCodec().encode(SEEN_TIME)
    indices = random.Random(7).sample(range(1, total + 1), min(sample_size, total))

    async def check() -> int:
        base = stack.kask_url if stack.kask_url.endswith("/") else stack.kask_url + "/"
        wrong = 0
        async with aiohttp.ClientSession() as session:
            for index in indices:
                url = URL(base + quote(echo_key(wiki, index), safe=""), encoded=True)
                async with session.get(url) as response:
                    if response.status != 200 or await response.read() != expected:
                        wrong += 1
        return wrong

    wrong = asyncio.run(check())
    return {"checked": len(indices), "wrong_or_missing": wrong}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.setup_logging(args.verbose)
    result: dict = {"benchmark": "replicator", "date": common.utc_now_text(), "machine": common.machine_facts(),
                    "command": " ".join([".venv/bin/python", "bench/bench_replicator.py", *sys.argv[1:]])}
    with common.Stack("replicator", kafka=args.kafka, kask_url=args.kask, need_redis=False, need_kask=True,
                      keep=args.keep) as stack, common.LoadSampler() as load_sampler:
        result["stack_startup_s"] = stack.startup_s
        overrides = {"max_in_flight": args.concurrency} if args.concurrency else {}
        config = stack.config(partitions=args.partitions, replicator=overrides)
        concurrency = config.replicator.max_in_flight
        stack.create_topics(config)
        run_id = config.replicator.group_id.rsplit("-", 1)[-1]
        wiki = f"benchrep{run_id}"

        result["produce"] = produce_events(config, wiki, args.keys)
        log.info("produced: %s", result["produce"])
        baseline_before = run_baseline(stack, f"rawbefore{run_id}", args.baseline_keys, concurrency)
        log.info("baseline before: %s", baseline_before)
        replicator = run_replicator(stack, config, args.keys)
        log.info("replicator: %s", {key: value for key, value in replicator.items() if key != "process"})
        baseline_after = run_baseline(stack, f"rawafter{run_id}", args.baseline_keys, concurrency)
        log.info("baseline after: %s", baseline_after)
        result["spot_check"] = spot_check(stack, wiki, args.keys)

        rates = [baseline_before["keys_per_s"], baseline_after["keys_per_s"]]
        baseline_rate = sum(rates) / len(rates)
        rate = replicator["records_per_s_steady"] or replicator["records_per_s_overall"]
        result["concurrency"] = concurrency
        result["baseline"] = {"before": baseline_before, "after": baseline_after,
                              "mean_keys_per_s": round(baseline_rate)}
        result["replicator"] = replicator
        result["figures"] = {
            "replicator_records_per_s": rate,
            "baseline_keys_per_s": round(baseline_rate),
            "ratio": common.ratio(rate, baseline_rate),
            "target_met": rate >= TARGET_RATIO * baseline_rate,
        }
        result["load_average"] = load_sampler.summary()
    common.emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
