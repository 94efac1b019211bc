"""Benchmark the backfill snapshot rate against a bare SCAN plus read loop over the same Redis.

  .venv/bin/python bench/bench_backfill.py --keys 10000000 --unrelated 2000000 --with-daemons

Steps:
1. Load --keys Echo seen-time keys and --unrelated other MainStash keys into
   a fresh Redis (devstack.keyspace.load).
2. Baseline: capture.backfill_scan.run_baselines(), the same SCAN, MATCH,
   client-side filter and read script on one thread, publishing nothing.
3. `echoseen backfill --json` into a fresh topic, sampling the resident
   memory and CPU of the process. Its rate is keys read (matched) per second
   from the first read to the last Kafka acknowledgement, as the job reports.
4. The baseline again, so drift during the run shows.
5. With --with-daemons: the capture and the replicator run (the replicator
   applies the topic into Kask) while a second backfill runs, and the
   resident memory of all three is sampled.

The result is one JSON document on stdout; the rate is compared with the
mean of the two baseline runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone

import common

from capture.backfill_plan import build_plan
from capture.backfill_scan import run_baselines
from devstack.keyspace import KeyspaceSpec, load

log = logging.getLogger("bench.backfill")

TARGET_RATIO = 0.5
STRETCH_KEYS_PER_S = 100_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=10_000_000, help="Echo seen-time keys to load (default %(default)s)")
    parser.add_argument("--unrelated", type=int, default=2_000_000,
                        help="unrelated MainStash keys to load next to them (default %(default)s)")
    parser.add_argument("--partitions", type=int, default=12, help="partitions of the event topic (default %(default)s)")
    parser.add_argument("--with-daemons", action="store_true",
                        help="also run the capture and the replicator (needs Cassandra and Kask) during a second "
                             "backfill and sample their resident memory")
    common.add_stack_arguments(parser, kask=True)
    return parser.parse_args(argv)


def run_baseline(config, plan) -> dict:
    results = run_baselines(config, plan.match, plan.filters)
    scanned = sum(result.scanned for result in results)
    read = sum(result.read for result in results)
    elapsed_s = sum(result.elapsed_s for result in results)
    return {"scanned": scanned, "read": read, "elapsed_s": round(elapsed_s, 2),
            "keys_read_per_s": round(read / elapsed_s) if elapsed_s else None,
            "keys_scanned_per_s": round(scanned / elapsed_s) if elapsed_s else None}


def run_backfill(stack: common.Stack, config, sampler: common.ProcessSampler, name: str) -> dict:
    """Run `echoseen backfill --json` to the end while sampling it; return its summary and samples."""
    backfill = common.Daemon(stack.workdir, "backfill", config, ["--json"], name=name)
    started = time.monotonic()
    backfill.start()
    sampler.watch(name, backfill.pid)
    status = backfill.wait_exit(timeout_s=6 * 3600)
    wall_s = time.monotonic() - started
    series = sampler.forget(name)
    if status != 0:
        raise RuntimeError(f"echoseen backfill exited with status {status}; log {backfill.log_path}:\n"
                           f"{backfill.log_tail()}")
    summary = json.loads(backfill.stdout())
    this_run = summary["this_run"]
    copy_s = this_run["copy_s"]
    memory = series.summary() if series else {}
    return {
        "status": summary["status"],
        "scanned": this_run["scanned"],
        "matched": this_run["matched"],
        "published": this_run["published"],
        "skipped": this_run["skipped"],
        "bad_values": this_run["bad_values"],
        "copy_s": copy_s,
        "wall_s": round(wall_s, 2),
        "keys_read_per_s": round(this_run["matched"] / copy_s) if copy_s else None,
        "keys_scanned_per_s": this_run["scanned_per_s"],
        "published_per_s": this_run["published_per_s"],
        "ping": [server.get("ping") for server in summary["servers"]],
        "process": memory,
        "memory_verdict": common.memory_verdict(memory),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.setup_logging(args.verbose)
    result: dict = {"benchmark": "backfill", "date": common.utc_now_text(), "machine": common.machine_facts(),
                    "command": " ".join([".venv/bin/python", "bench/bench_backfill.py", *sys.argv[1:]]),
                    "disk_free_gib_at_start": common.disk_free_gib("/tmp")}
    need_kask = args.with_daemons
    with common.Stack("backfill", redis_url=args.redis, kafka=args.kafka, kask_url=getattr(args, "kask", None),
                      need_kask=need_kask, keep=args.keep) as stack, common.LoadSampler() as load_sampler:
        result["stack_startup_s"] = stack.startup_s
        config = stack.config(partitions=args.partitions)
        stack.create_topics(config)
        plan = build_plan(config, None, None, None)

        # Step 1: the keyspace.
        spec = KeyspaceSpec(keys=args.keys, unrelated_fraction=args.unrelated / args.keys if args.keys else 0.0,
                            db=stack.redis_db, as_of=datetime.now(timezone.utc))
        client = stack.redis_client()
        loaded = load(client, spec, batch_size=10_000)
        result["keyspace"] = {"echo_keys": loaded.counts.echo_keys, "unrelated_keys": loaded.counts.unrelated_keys,
                              "placeholders": loaded.counts.placeholders, "total_keys": loaded.counts.total_keys,
                              "dbsize": client.dbsize(), "load_s": round(loaded.elapsed_s, 1),
                              "load_keys_per_s": round(loaded.keys_per_s),
                              "redis_used_memory_mib": round(client.info("memory")["used_memory"] / common.MIB)}
        log.info("keyspace: %s", result["keyspace"])

        # Steps 2 to 4: baseline, snapshot, baseline.
        with common.ProcessSampler(interval_s=1.0) as sampler:
            log.info("baseline: SCAN plus read loop without Kafka")
            baseline_before = run_baseline(config, plan)
            log.info("baseline before: %s", baseline_before)
            log.info("snapshot: echoseen backfill into %s", config.kafka.topic)
            pids = stack.pids()
            cpu_before = common.cpu_snapshot(pids)
            started = time.monotonic()
            snapshot = run_backfill(stack, config, sampler, "backfill")
            snapshot["service_cpu"] = common.cpu_delta(cpu_before, common.cpu_snapshot(pids),
                                                       time.monotonic() - started)
            log.info("snapshot: %s", {key: value for key, value in snapshot.items() if key != "process"})
            baseline_after = run_baseline(config, plan)
            log.info("baseline after: %s", baseline_after)
        snapshot["topic_disk"] = stack.topic_disk_usage(config.kafka.topic)

        baseline_rates = [run["keys_read_per_s"] for run in (baseline_before, baseline_after) if run["keys_read_per_s"]]
        baseline_rate = sum(baseline_rates) / len(baseline_rates) if baseline_rates else None
        result["baseline"] = {"before": baseline_before, "after": baseline_after,
                              "mean_keys_read_per_s": round(baseline_rate) if baseline_rate else None}
        result["snapshot"] = snapshot
        rate = snapshot["keys_read_per_s"]
        result["figures"] = {
            "snapshot_keys_per_s": rate,
            "baseline_keys_per_s": round(baseline_rate) if baseline_rate else None,
            "ratio": common.ratio(rate, baseline_rate),
            "target_met": bool(rate and baseline_rate and rate >= TARGET_RATIO * baseline_rate),
            "stretch_met": bool(rate and rate >= STRETCH_KEYS_PER_S),
        }

        # Step 5: the daemons' memory during a second backfill.
        if args.with_daemons:
            result["with_daemons"] = run_with_daemons(stack, config)

        result["load_average"] = load_sampler.summary()
    common.emit(result, args.json_out)
    return 0


def run_with_daemons(stack: common.Stack, config) -> dict:
    """Run the capture and the replicator while a second backfill publishes into the same topic."""
    second = replace(config, backfill=replace(config.backfill,
                                              checkpoint_file=str(stack.workdir / "backfill-second.json")))
    capture = common.Daemon(stack.workdir, "capture", config)
    replicator = common.Daemon(stack.workdir, "replicate", config)
    with common.ProcessSampler(interval_s=1.0) as sampler:
        try:
            capture.start()
            replicator.start()
            capture.wait_ready()
            replicator.wait_ready()
            sampler.watch("capture", capture.pid)
            sampler.watch("replicator", replicator.pid)
            log.info("second backfill with the capture and the replicator running")
            snapshot = run_backfill(stack, second, sampler, "backfill-with-daemons")
            samples = replicator.samples()
            applied = common.metric_sum(samples, "echoseen_replicator_records_total")
        finally:
            capture.stop()
            replicator.stop()
        summaries = sampler.summaries()
    return {
        "backfill": snapshot,
        "replicator_records_applied": int(applied),
        "capture": summaries.get("capture"),
        "capture_memory_verdict": common.memory_verdict(summaries.get("capture", {})),
        "replicator": summaries.get("replicator"),
        "replicator_memory_verdict": common.memory_verdict(summaries.get("replicator", {})),
    }


if __name__ == "__main__":
    sys.exit(main())
