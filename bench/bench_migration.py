"""Benchmark a whole migration of Echo keys into Kask: the snapshot plus its apply, extrapolated to larger keyspaces.

  .venv/bin/python bench/bench_migration.py --keys 1000000

Steps:
1. Load --keys Echo seen-time keys (plus unrelated keys, --unrelated-fraction
   of them) into a fresh Redis.
2. Start the replicator on a fresh topic, as a migration would, then run
   `echoseen backfill`. The migration is complete when the replicator has
   finished as many records as the backfill published.
3. Report the time of each phase (the snapshot, the apply, the tail of the
   apply after the snapshot ended), the CPU time of every process, the disk
   the topic used, Cassandra's data folder, and a linear extrapolation to
   10 and 50 million keys.

The extrapolation assumes each phase keeps the rate it had here. It is an
estimate: Cassandra's compactions cost more as its data grows, and a real
Kask cluster has more cores than this machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timezone

import common

from devstack.keyspace import KeyspaceSpec, load

log = logging.getLogger("bench.migration")

EXTRAPOLATE_TO = (10_000_000, 50_000_000)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="Echo seen-time keys to migrate (default %(default)s)")
    parser.add_argument("--unrelated-fraction", type=float, default=0.1,
                        help="unrelated keys per Echo key (default %(default)s)")
    parser.add_argument("--partitions", type=int, default=12, help="partitions of the event topic (default %(default)s)")
    common.add_stack_arguments(parser, kask=True)
    return parser.parse_args(argv)


def folder_bytes(path) -> int | None:
    if path is None or not path.exists():
        return None
    return sum(entry.stat().st_blocks * 512 for entry in path.rglob("*") if entry.is_file())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.setup_logging(args.verbose)
    result: dict = {"benchmark": "migration", "date": common.utc_now_text(), "machine": common.machine_facts(),
                    "command": " ".join([".venv/bin/python", "bench/bench_migration.py", *sys.argv[1:]])}
    with common.Stack("migration", redis_url=args.redis, kafka=args.kafka, kask_url=args.kask, need_kask=True,
                      keep=args.keep) as stack, common.LoadSampler() as load_sampler:
        result["stack_startup_s"] = stack.startup_s
        config = stack.config(partitions=args.partitions)
        stack.create_topics(config)
        cassandra_data = stack.cassandra_server.config.data_dir if stack.cassandra_server is not None else None
        cassandra_before = folder_bytes(cassandra_data)

        # Step 1: the keyspace.
        spec = KeyspaceSpec(keys=args.keys, unrelated_fraction=args.unrelated_fraction, db=stack.redis_db,
                            as_of=datetime.now(timezone.utc))
        client = stack.redis_client()
        loaded = load(client, spec, batch_size=10_000)
        result["keyspace"] = {"echo_keys": loaded.counts.echo_keys, "unrelated_keys": loaded.counts.unrelated_keys,
                              "placeholders": loaded.counts.placeholders, "load_s": round(loaded.elapsed_s, 1)}

        # Step 2: the replicator first, then the snapshot.
        replicator = common.Daemon(stack.workdir, "replicate", config)
        backfill = common.Daemon(stack.workdir, "backfill", config, ["--json"])
        progress: list[tuple[float, float]] = []
        with common.ProcessSampler(interval_s=1.0) as sampler:
            try:
                replicator.start()
                replicator.wait_ready(timeout_s=120)
                sampler.watch("replicator", replicator.pid)
                pids = {"replicator": replicator.pid, **stack.pids()}
                cpu_before = common.cpu_snapshot(pids)
                started = time.monotonic()
                backfill.start()
                sampler.watch("backfill", backfill.pid)
                cpu_before.update(common.cpu_snapshot({"backfill": backfill.pid}))
                backfill_cpu: dict[str, float] = {}
                backfill_s = None
                published = None
                applied = 0.0
                first_applied_s = None
                while True:
                    time.sleep(1.0)
                    now_s = time.monotonic() - started
                    if backfill_s is None:
                        backfill_cpu = common.cpu_snapshot({"backfill": backfill.pid}) or backfill_cpu
                        status = backfill.process.poll()
                        if status is not None:
                            backfill_s = now_s
                            if status != 0:
                                raise RuntimeError(f"echoseen backfill exited with {status}; log "
                                                   f"{backfill.log_path}:\n{backfill.log_tail()}")
                            summary = json.loads(backfill.stdout())
                            published = summary["this_run"]["published"]
                            log.info("snapshot done in %.1f s: %d events published", now_s, published)
                    applied = common.metric_sum(replicator.samples(), "echoseen_replicator_records_total")
                    if applied and first_applied_s is None:
                        first_applied_s = now_s
                    progress.append((now_s, applied))
                    if published is not None and applied >= published:
                        break
                    if replicator.process.poll() is not None:
                        raise RuntimeError(f"the replicator exited; log {replicator.log_path}:\n"
                                           f"{replicator.log_tail()}")
                total_s = time.monotonic() - started
                cpu_after = common.cpu_snapshot(pids)
                cpu_after.update(backfill_cpu)
                samples = replicator.samples()
            finally:
                replicator.stop()
            memory = sampler.summaries()
        cpu = common.cpu_delta(cpu_before, cpu_after, total_s)
        outcomes = {labels["outcome"]: int(value) for name, labels, value in samples
                    if name == "echoseen_replicator_records_total" and value}
        topic_disk = stack.topic_disk_usage(config.kafka.topic)
        cassandra_after = folder_bytes(cassandra_data)

        apply_s = total_s - (first_applied_s or 0.0)
        copy_s = summary["this_run"]["copy_s"]
        read_per_s = summary["this_run"]["matched"] / copy_s if copy_s else None
        apply_per_s = published / apply_s if apply_s else None
        published_share = published / loaded.counts.echo_keys if loaded.counts.echo_keys else 0.0
        result["phases"] = {
            "snapshot_s": round(backfill_s, 1),
            "snapshot_copy_s": copy_s,
            "snapshot_keys_per_s": round(read_per_s) if read_per_s else None,
            "first_record_applied_s": round(first_applied_s, 1) if first_applied_s is not None else None,
            "apply_s": round(apply_s, 1),
            "apply_records_per_s": round(apply_per_s) if apply_per_s else None,
            "apply_tail_after_snapshot_s": round(total_s - backfill_s, 1),
            "total_s": round(total_s, 1),
        }
        result["backfill_summary"] = {key: summary["this_run"][key] for key in
                                      ("scanned", "matched", "published", "skipped", "bad_values", "copy_s")}
        result["replicator_outcomes"] = outcomes
        result["cpu"] = cpu
        result["memory"] = {name: summary_ | {"verdict": common.memory_verdict(summary_)}
                            for name, summary_ in memory.items()}
        bytes_per_event = topic_disk["segment_bytes"] / published if topic_disk and published else None
        result["disk"] = {
            "topic": topic_disk,
            "topic_segment_bytes_per_event": round(bytes_per_event, 1) if bytes_per_event else None,
            "cassandra_data_growth_bytes": (cassandra_after - cassandra_before)
            if cassandra_after is not None and cassandra_before is not None else None,
        }
        # The snapshot and the apply overlap, so the slower of the two sets the total; the time to the first
        # applied record (process start, group join) is a fixed cost.
        extrapolation = {}
        for keys in EXTRAPOLATE_TO:
            snapshot_s = keys / read_per_s if read_per_s else None
            apply_estimate_s = keys * published_share / apply_per_s if apply_per_s else None
            if snapshot_s is None or apply_estimate_s is None:
                continue
            total_estimate_s = (first_applied_s or 0.0) + max(snapshot_s, apply_estimate_s)
            extrapolation[f"{keys // 1_000_000}M_keys"] = {
                "snapshot_s": round(snapshot_s),
                "apply_s": round(apply_estimate_s),
                "total_s": round(total_estimate_s),
                "total_h": round(total_estimate_s / 3600, 2),
                "topic_segment_gib": round(bytes_per_event * keys * published_share / 1024 ** 3, 2)
                if bytes_per_event else None,
            }
        result["extrapolation"] = extrapolation
        result["figures"] = {"keys": loaded.counts.echo_keys, "total_s": round(total_s, 1),
                             "keys_per_s": round(loaded.counts.echo_keys / total_s)}
        result["load_average"] = load_sampler.summary()
    common.emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
