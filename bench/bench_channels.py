"""Compare what the capture's two channel modes cost Redis and the capture when most writes are to other keys.

  .venv/bin/python bench/bench_channels.py --rate 20000 --unrelated-share 0.8 --duration 60

keyspace mode pattern-subscribes to the __keyspace@<db>__ channels of the
watched key patterns, so Redis matches every notification against the
patterns and sends only watched keys. keyevent mode subscribes to the
__keyevent@<db>__ channels, so Redis sends every key's events and the capture
filters them. Each Redis is configured with only the flags its mode needs
(Kg$xe or Eg$xe).

Part A, the real capture: for each mode, bench/writer.py writes --rate SETEX
per second for --duration seconds, --unrelated-share of them to unrelated
keys. Measured: Redis CPU (INFO CPU used_cpu_sys plus used_cpu_user), the
capture's CPU, and whether it kept up (no gap).

Part B, the writer's throughput: for notifications off and for each mode
with a plain subscriber (bench/subscriber.py) on that mode's channels, the
writer writes as fast as it can for --max-duration seconds. Measured: the
writer's rate and Redis CPU per write. The subscriber's output buffer limit
is lifted, so a slow subscriber costs Redis memory, not a disconnect.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import common

from capture.patterns import required_flags

log = logging.getLogger("bench.channels")

DEFAULT_PUBSUB_LIMIT = "pubsub 33554432 8388608 60"
MODES = ("keyspace", "keyevent")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20_000.0,
                        help="writes per second in part A, all keys (default %(default)s)")
    parser.add_argument("--unrelated-share", type=float, default=0.8,
                        help="share of writes to unrelated keys (default %(default)s)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of each part A run (default %(default)s)")
    parser.add_argument("--max-duration", type=float, default=15.0,
                        help="seconds of each part B run (default %(default)s)")
    parser.add_argument("--echo-keys", type=int, default=1_000_000,
                        help="user ids per type the writer picks from (default %(default)s)")
    parser.add_argument("--partitions", type=int, default=12, help="partitions of the event topic (default %(default)s)")
    common.add_stack_arguments(parser)
    return parser.parse_args(argv)


def per_thousand(cpu_s: float, writes: int) -> float | None:
    return round(1000 * cpu_s / writes, 4) if writes else None


def run_capture_mode(args: argparse.Namespace, stack: common.Stack, mode: str) -> dict:
    """Part A: the capture in ``mode`` under a fixed write rate."""
    client = stack.redis_client()
    client.config_set("notify-keyspace-events", required_flags(mode))
    config = stack.config(partitions=args.partitions, capture={"channel_mode": mode})
    stack.create_topics(config)
    capture = common.Daemon(stack.workdir, "capture", config, name=f"capture-{mode}")
    capture.start()
    try:
        capture.wait_ready()
        time.sleep(1.0)
        before = capture.samples()
        redis_before = common.redis_cpu_s(client)
        cpu_before = common.cpu_snapshot({"capture": capture.pid})
        started = time.monotonic()
        writer = common.start_writer(stack, stack.workdir / f"a-{mode}", rate_per_s=args.rate,
                                     duration_s=args.duration, echo_keys=args.echo_keys,
                                     unrelated_share=args.unrelated_share, name=f"writer-a-{mode}")
        written = writer.result(timeout_s=args.duration + 120)
        # The capture's work for the last writes ends shortly after the writer; one second covers it.
        time.sleep(1.0)
        elapsed_s = time.monotonic() - started
        redis_cpu_s = common.redis_cpu_s(client) - redis_before
        capture_cpu = common.cpu_delta(cpu_before, common.cpu_snapshot({"capture": capture.pid}), elapsed_s)
        after = capture.samples()
    finally:
        capture.stop()

    def delta(name: str, **labels: str) -> int:
        return int(common.metric_sum(after, name, **labels) - common.metric_sum(before, name, **labels))

    capture_cpu_s = capture_cpu.get("capture", {}).get("cpu_s", 0.0)
    return {
        "mode": mode,
        "notify_keyspace_events": required_flags(mode),
        "writer": written,
        "elapsed_s": round(elapsed_s, 1),
        "redis_cpu_s": round(redis_cpu_s, 2),
        "redis_cpu_percent_of_one_core": round(100 * redis_cpu_s / elapsed_s, 1),
        "redis_cpu_ms_per_1000_writes": per_thousand(1000 * redis_cpu_s, written["writes"]),
        "capture_cpu_s": capture_cpu_s,
        "capture_cpu_percent_of_one_core": capture_cpu.get("capture", {}).get("percent_of_one_core"),
        "capture_cpu_ms_per_1000_writes": per_thousand(1000 * capture_cpu_s, written["writes"]),
        "notifications_watched": delta("echoseen_capture_notifications_total"),
        "notifications_ignored": delta("echoseen_capture_ignored_notifications_total"),
        "published_live": delta("echoseen_capture_events_published_total", origin="live"),
        "gaps": delta("echoseen_capture_gaps_total"),
    }


def run_writer_max(args: argparse.Namespace, stack: common.Stack, mode: str) -> dict:
    """Part B: the writer at full speed with notifications off or a plain subscriber in ``mode``."""
    client = stack.redis_client()
    workdir = stack.workdir / f"b-{mode}"
    workdir.mkdir(parents=True, exist_ok=True)
    subscriber = None
    client.config_set("notify-keyspace-events", "" if mode == "off" else required_flags(mode))
    client.config_set("client-output-buffer-limit", "pubsub 0 0 0")
    try:
        if mode != "off":
            ready_file = workdir / "ready"
            subscriber = common.Helper("subscriber.py", ["--url", stack.redis_url, "--mode", mode, "--ready-file",
                                                         str(ready_file), "--idle-exit", "2"], workdir, "subscriber")
            if not common.wait_for(ready_file.exists, timeout_s=30):
                raise RuntimeError(f"the subscriber did not subscribe; log {subscriber.log_path}")
        redis_before = common.redis_cpu_s(client)
        writer = common.start_writer(stack, workdir, rate_per_s=0, duration_s=args.max_duration,
                                     echo_keys=args.echo_keys, unrelated_share=args.unrelated_share,
                                     name=f"writer-b-{mode}")
        written = writer.result(timeout_s=args.max_duration + 120)
        redis_cpu_s = common.redis_cpu_s(client) - redis_before
        received = subscriber.result(timeout_s=args.max_duration * 20 + 60) if subscriber else None
    finally:
        if subscriber is not None:
            subscriber.stop()
        client.config_set("client-output-buffer-limit", DEFAULT_PUBSUB_LIMIT)
    return {
        "mode": mode,
        "writer": written,
        "writes_per_s": written["rate_per_s"],
        "redis_cpu_s_while_writing": round(redis_cpu_s, 2),
        "redis_cpu_ms_per_1000_writes": per_thousand(1000 * redis_cpu_s, written["writes"]),
        "subscriber": received,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.setup_logging(args.verbose)
    result: dict = {"benchmark": "channels", "date": common.utc_now_text(), "machine": common.machine_facts(),
                    "command": " ".join([".venv/bin/python", "bench/bench_channels.py", *sys.argv[1:]]),
                    "unrelated_share": args.unrelated_share}
    with common.Stack("channels", redis_url=args.redis, kafka=args.kafka, keep=args.keep) as stack, \
            common.LoadSampler() as load_sampler:
        original_flags = stack.redis_client().config_get("notify-keyspace-events")["notify-keyspace-events"]
        try:
            part_a = [run_capture_mode(args, stack, mode) for mode in MODES]
            for run in part_a:
                log.info("part A %s: %s", run["mode"], run)
            part_b = [run_writer_max(args, stack, mode) for mode in ("off", *MODES)]
            for run in part_b:
                log.info("part B %s: %s", run["mode"], run)
        finally:
            stack.redis_client().config_set("notify-keyspace-events", original_flags)
        result["stack_startup_s"] = stack.startup_s
        result["capture_runs"] = part_a
        result["writer_max_runs"] = part_b

        by_mode = {run["mode"]: run for run in part_a}
        total = {mode: run["redis_cpu_s"] + run["capture_cpu_s"] for mode, run in by_mode.items()}
        writer_max = {run["mode"]: run["writes_per_s"] for run in part_b}
        result["figures"] = {
            "redis_plus_capture_cpu_s": {mode: round(value, 2) for mode, value in total.items()},
            "redis_cpu_ms_per_1000_writes": {mode: by_mode[mode]["redis_cpu_ms_per_1000_writes"] for mode in MODES},
            "capture_cpu_ms_per_1000_writes": {mode: by_mode[mode]["capture_cpu_ms_per_1000_writes"]
                                               for mode in MODES},
            "writer_max_writes_per_s": writer_max,
            "cheaper_mode": min(total, key=total.get),
        }
        result["load_average"] = load_sampler.summary()
    common.emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
