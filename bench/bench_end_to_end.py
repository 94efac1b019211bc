"""Benchmark the delay from a Redis write to the value being visible in Kask, under a steady write load.

  .venv/bin/python bench/bench_end_to_end.py --rate 1000 --duration 300

The whole path runs: Redis, `echoseen capture`, Kafka, `echoseen replicate`,
Kask on Cassandra. bench/writer.py writes --rate SETEX per second to random
Echo keys for the warm-up plus --duration seconds. During --duration a probe
in this process writes a new key every --probe-interval seconds (SETEX, as
Echo does) and polls Kask for it every --poll-ms milliseconds (the next GET
starts that long after the previous response) until Kask returns the value.
A probe's delay runs from just before its SETEX is sent to the response that
showed the value, so it includes up to one poll interval plus one GET.
At most --max-outstanding probes poll at once: when the pipeline falls
behind, every waiting probe polls Kask back to back, and without a bound those
GETs take the Kask capacity the replicator needs, so the delay feeds on
itself. A probe whose start finds the bound reached is skipped and counted.

Per-stage figures come from the daemons' histograms over the same window:
the capture's Redis read to Kafka acknowledgement
(echoseen_capture_read_to_ack_seconds), the replicator's Redis read to Kask
confirmation (echoseen_replicator_end_to_end_delay_seconds) and the Kask
request latency the replicator measured, per method. The resident memory of
both daemons is sampled every second over the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from urllib.parse import quote

import aiohttp
import redis.asyncio as redis_asyncio
from yarl import URL

import common

log = logging.getLogger("bench.end_to_end")

TARGETS_S = {"p50": 0.100, "p99": 0.500}
STRETCH_S = {"p50": 0.050, "p99": 0.250}
TTL_S = 31_536_000
PROBE_TIMEOUT_S = 60.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="background writes per second (default %(default)s)")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of measurement (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before measuring (default %(default)s)")
    parser.add_argument("--probe-interval", type=float, default=0.25,
                        help="seconds between probe writes (default %(default)s)")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="milliseconds between Kask polls (default %(default)s)")
    parser.add_argument("--max-outstanding", type=int, default=4,
                        help="probes polling at the same time at most; later ones are skipped (default %(default)s)")
    parser.add_argument("--echo-keys", type=int, default=100_000,
                        help="user ids per type the background writer picks from (default %(default)s)")
    parser.add_argument("--partitions", type=int, default=12, help="partitions of the event topic (default %(default)s)")
    common.add_stack_arguments(parser, kask=True)
    return parser.parse_args(argv)


async def run_probes(redis_url: str, kask_url: str, wiki: str, duration_s: float, interval_s: float,
                     poll_s: float, max_outstanding: int) -> dict:
    """Write a new key every ``interval_s`` and time until Kask returns it; return the delays and failures."""
    client = redis_asyncio.Redis.from_url(redis_url, protocol=2)
    base = kask_url if kask_url.endswith("/") else kask_url + "/"
    delays: list[float] = []
    polls: list[int] = []
    failures: list[str] = []

    async def probe(session: aiohttp.ClientSession, number: int) -> None:
        key = f"{wiki}:echo:seen:alert:time:{number}"
        url = URL(base + quote(key, safe=""), encoded=True)
        value = time.strftime('s:14:"%Y%m%d%H%M%S";', time.gmtime())
        started = time.monotonic()
        await client.execute_command("SETEX", key, TTL_S, value)
        count = 0
        while True:
            count += 1
            async with session.get(url) as response:
                await response.read()
                status = response.status
            if status == 200:
                delays.append(time.monotonic() - started)
                polls.append(count)
                return
            if status != 404:
                failures.append(f"{key}: GET returned {status}")
                return
            if time.monotonic() - started > PROBE_TIMEOUT_S:
                failures.append(f"{key}: not visible after {PROBE_TIMEOUT_S:.0f} s")
                return
            await asyncio.sleep(poll_s)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        tasks: list[asyncio.Task] = []
        started = time.monotonic()
        number = 0
        skipped = 0
        # Probes start on a fixed schedule, whatever earlier probes are doing, so slow ones do not hide others.
        while time.monotonic() - started < duration_s:
            number += 1
            if sum(1 for task in tasks if not task.done()) < max_outstanding:
                tasks.append(asyncio.create_task(probe(session, number)))
            else:
                skipped += 1
            delay_s = started + number * interval_s - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
        await asyncio.gather(*tasks)
    await client.aclose()
    return {"delays": delays, "polls": polls, "failures": failures, "probes": number - skipped, "skipped": skipped}


def stage_figures(before: common.Samples, after: common.Samples, name: str, **labels: str) -> dict:
    return common.histogram_summary(common.bucket_delta(common.histogram_buckets(before, name, **labels),
                                                        common.histogram_buckets(after, name, **labels)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.setup_logging(args.verbose)
    result: dict = {"benchmark": "end_to_end", "date": common.utc_now_text(), "machine": common.machine_facts(),
                    "command": " ".join([".venv/bin/python", "bench/bench_end_to_end.py", *sys.argv[1:]])}
    with common.Stack("e2e", redis_url=args.redis, kafka=args.kafka, kask_url=args.kask, need_kask=True,
                      keep=args.keep) as stack, common.LoadSampler() as load_sampler:
        result["stack_startup_s"] = stack.startup_s
        config = stack.config(partitions=args.partitions)
        stack.create_topics(config)
        wiki = f"probe{config.replicator.group_id.rsplit('-', 1)[-1]}"

        capture = common.Daemon(stack.workdir, "capture", config)
        replicator = common.Daemon(stack.workdir, "replicate", config)
        with common.ProcessSampler(interval_s=1.0) as sampler:
            try:
                capture.start()
                replicator.start()
                result["ready_s"] = {"capture": round(capture.wait_ready(), 1),
                                     "replicator": round(replicator.wait_ready(timeout_s=120), 1)}
                sampler.watch("capture", capture.pid)
                sampler.watch("replicator", replicator.pid)
                writer = common.start_writer(stack, stack.workdir, rate_per_s=args.rate,
                                             duration_s=args.warmup + args.duration, echo_keys=args.echo_keys)
                time.sleep(args.warmup)

                capture_before, replicator_before = capture.samples(), replicator.samples()
                pids = {"capture": capture.pid, "replicator": replicator.pid, "writer": writer.pid, **stack.pids()}
                cpu_before = common.cpu_snapshot(pids)
                started = time.monotonic()
                probes = asyncio.run(run_probes(stack.redis_url, stack.kask_url, wiki, args.duration,
                                                args.probe_interval, args.poll_ms / 1000,
                                                args.max_outstanding))
                elapsed_s = time.monotonic() - started
                cpu = common.cpu_delta(cpu_before, common.cpu_snapshot(pids), elapsed_s)
                capture_after, replicator_after = capture.samples(), replicator.samples()
                written = writer.result(timeout_s=args.warmup + args.duration + 120)
            finally:
                statuses = {"capture": capture.stop(), "replicator": replicator.stop()}
            memory = sampler.summaries()

        delays = common.quantiles(probes["delays"])
        gaps = common.metric_sum(capture_after, "echoseen_capture_gaps_total") - common.metric_sum(
            capture_before, "echoseen_capture_gaps_total")
        stages = {
            "capture_read_to_ack": stage_figures(capture_before, capture_after, "echoseen_capture_read_to_ack_seconds"),
            "replicator_end_to_end": stage_figures(replicator_before, replicator_after,
                                                   "echoseen_replicator_end_to_end_delay_seconds"),
            "kask_get": stage_figures(replicator_before, replicator_after,
                                      "echoseen_replicator_kask_request_duration_seconds", method="GET"),
            "kask_post": stage_figures(replicator_before, replicator_after,
                                       "echoseen_replicator_kask_request_duration_seconds", method="POST"),
        }
        outcomes = {}
        for name, labels, value in replicator_after:
            if name == "echoseen_replicator_records_total":
                delta = value - common.metric_sum(replicator_before, name, outcome=labels["outcome"])
                if delta:
                    outcomes[labels["outcome"]] = int(delta)
        result.update({
            "rate_per_s": args.rate,
            "writer": written,
            "probe": {key: value for key, value in probes.items() if key not in ("delays", "polls")} | {
                "samples": len(probes["delays"]), "mean_polls": round(sum(probes["polls"]) / len(probes["polls"]), 1)
                if probes["polls"] else None, "failures": probes["failures"][:10],
                "failure_count": len(probes["failures"])},
            "delay": delays,
            "stages": stages,
            "capture_gaps": int(gaps),
            "replicator_outcomes": outcomes,
            "cpu": cpu,
            "memory": {name: summary | {"verdict": common.memory_verdict(summary)} for name, summary in memory.items()},
            "exit_statuses": statuses,
        })
        p50, p99 = delays.get("p50_s"), delays.get("p99_s")
        result["figures"] = {
            "p50_s": p50,
            "p99_s": p99,
            "samples": delays["count"],
            "target_met": bool(p50 is not None and p50 <= TARGETS_S["p50"] and p99 <= TARGETS_S["p99"]),
            "stretch_met": bool(p50 is not None and p50 <= STRETCH_S["p50"] and p99 <= STRETCH_S["p99"]),
        }
        result["load_average"] = load_sampler.summary()
    common.emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
