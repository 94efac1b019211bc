"""Benchmark the highest rate of Echo writes (SETEX) the capture keeps up with, against a bare subscriber.

  .venv/bin/python bench/bench_capture.py --duration 60

The capture keeps up with a rate for a step (--duration seconds of writes at
that rate by bench/writer.py) when all of these hold:

- no gap was recorded (echoseen_capture_gaps_total did not move);
- the pending set stayed bounded: echoseen_capture_pending_keys never held
  more than one second of writes, and the output buffer Redis keeps for the
  capture's subscriber connection (CLIENT LIST omem) stayed under 8 MiB, the
  default soft limit of pub/sub clients;
- the p99 of echoseen_capture_read_to_ack_seconds over the step is under 1 s;
- every notification was counted (2 per SETEX: set and expire) within 2 s
  after the writer stopped.

A step whose writer reached less than 97 % of the requested rate is reported
as writer-limited and proves nothing either way.

Each step starts once the capture has no open gap and nothing pending, so
the catch-up scan after a failed step is not measured as part of the next.

Search: a full step at --target (20,000 writes/s), then short probe steps
(--probe-duration) upward in --step increments until one fails, then full
steps from the highest passing probe downward until one passes. Below the
target the probes go downward instead.

Baseline (before and after the capture runs): one plain redis-py subscriber
(hiredis, RESP2, bench/subscriber.py) on the same keyspace channels while the
writer writes as fast as it can for --baseline-duration seconds. Its output
buffer limit is lifted for that run, so the drained rate is what the
subscriber reads: messages / 2 per second from its first to its last message.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import common

log = logging.getLogger("bench.capture")

TARGET_WRITES_PER_S = 20_000
PUBSUB_SOFT_LIMIT_BYTES = 8 * common.MIB
DEFAULT_PUBSUB_LIMIT = "pubsub 33554432 8388608 60"
NOTIFICATIONS_PER_SETEX = 2
WRITER_SHORTFALL = 0.97
DRAIN_LIMIT_S = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of each full step (default %(default)s)")
    parser.add_argument("--probe-duration", type=float, default=15.0,
                        help="seconds of each probe step (default %(default)s)")
    parser.add_argument("--target", type=float, default=TARGET_WRITES_PER_S,
                        help="rate of the first full step, writes/s (default %(default)s)")
    parser.add_argument("--step", type=float, default=5000.0, help="rate increment between steps (default %(default)s)")
    parser.add_argument("--max-rate", type=float, default=200_000.0, help="highest rate probed (default %(default)s)")
    parser.add_argument("--echo-keys", type=int, default=1_000_000,
                        help="user ids per type the writer picks from (default %(default)s)")
    parser.add_argument("--baseline-duration", type=float, default=15.0,
                        help="seconds of writing for each baseline run (default %(default)s)")
    parser.add_argument("--channel-mode", choices=("keyspace", "keyevent"), default="keyspace",
                        help="[capture] channel_mode (default %(default)s)")
    parser.add_argument("--partitions", type=int, default=12, help="partitions of the event topic (default %(default)s)")
    parser.add_argument("--no-search", action="store_true", help="run only the full step at --target")
    parser.add_argument("--profile-dir", metavar="DIR",
                        help="record each full step with py-spy into DIR: collapsed stacks (for flame graphs) of the thread holding the GIL")
    common.add_stack_arguments(parser)
    return parser.parse_args(argv)


class CaptureBench:
    def __init__(self, args: argparse.Namespace, stack: common.Stack) -> None:
        self.args = args
        self.stack = stack
        self.client = stack.redis_client()
        notify = "Kg$xe" if args.channel_mode == "keyspace" else "Eg$xe"
        self.client.config_set("notify-keyspace-events", notify)
        self.config = stack.config(partitions=args.partitions, capture={"channel_mode": args.channel_mode})
        stack.create_topics(self.config)
        self.capture: common.Daemon | None = None
        self.steps: list[dict] = []

    # -- baseline -------------------------------------------------------------

    def baseline(self, name: str) -> dict:
        """Drain rate of a plain subscriber while the writer writes as fast as it can."""
        workdir = self.stack.workdir / name
        ready_file = workdir / "ready"
        workdir.mkdir(parents=True, exist_ok=True)
        self.client.config_set("client-output-buffer-limit", "pubsub 0 0 0")
        try:
            subscriber = common.Helper("subscriber.py", ["--url", self.stack.redis_url, "--mode",
                                                         self.args.channel_mode, "--ready-file", str(ready_file),
                                                         "--idle-exit", "2"], workdir, "subscriber")
            if not common.wait_for(ready_file.exists, timeout_s=30):
                subscriber.stop()
                raise RuntimeError(f"the baseline subscriber did not subscribe; log {subscriber.log_path}")
            redis_cpu_before = common.redis_cpu_s(self.client)
            writer = common.start_writer(self.stack, workdir, rate_per_s=0, duration_s=self.args.baseline_duration,
                                         echo_keys=self.args.echo_keys, name="writer")
            with common.ProcessSampler(interval_s=1.0) as sampler:
                sampler.watch("subscriber", subscriber.pid)
                written = writer.result()
                received = subscriber.result(timeout_s=self.args.baseline_duration * 20 + 60)
                processes = sampler.summaries()
            redis_cpu_s = common.redis_cpu_s(self.client) - redis_cpu_before
        finally:
            self.client.config_set("client-output-buffer-limit", DEFAULT_PUBSUB_LIMIT)
        expected = NOTIFICATIONS_PER_SETEX * written["echo_writes"]
        span_s = received["span_s"]
        drained = received["messages"] / NOTIFICATIONS_PER_SETEX / span_s if span_s else None
        return {
            "writer": written,
            "subscriber": received,
            "messages_expected": expected,
            "all_received": received["messages"] >= expected,
            "drained_writes_per_s": round(drained) if drained else None,
            # When the subscriber finished about when the writer did, the writer set the pace.
            "writer_limited": bool(span_s and span_s <= written["elapsed_s"] * 1.05),
            "subscriber_process": processes.get("subscriber"),
            "redis_cpu_s": round(redis_cpu_s, 2),
        }

    # -- the capture ----------------------------------------------------------

    def start_capture(self) -> None:
        self.capture = common.Daemon(self.stack.workdir, "capture", self.config).start()
        ready_s = self.capture.wait_ready()
        log.info("capture ready in %.1f s", ready_s)

    def stop_capture(self) -> int | None:
        status = self.capture.stop() if self.capture is not None else None
        self.capture = None
        return status

    def _subscriber_omem(self) -> int:
        for entry in self.client.client_list(_type="pubsub"):
            if entry.get("name") == "echoseen-capture-subscriber":
                return int(entry.get("omem", 0))
        return 0

    def wait_quiescent(self, timeout_s: float = 600.0) -> float:
        """Wait until no gap is open and nothing is pending, so a catch-up scan of an earlier step is over.

        Returns the seconds waited. A failed step leaves a gap whose catch-up
        scan reads and publishes keys for a while; a step started meanwhile
        would measure the catch-up too.
        """
        capture = self.capture
        assert capture is not None
        started = time.monotonic()

        def quiet() -> bool:
            samples = capture.samples()
            return (common.metric_sum(samples, "echoseen_capture_open_gaps") == 0
                    and common.metric_sum(samples, "echoseen_capture_pending_keys") == 0)

        if not common.wait_for(quiet, timeout_s=timeout_s, interval_s=1.0):
            log.warning("the capture still has open gaps or pending keys after %.0f s; stepping on", timeout_s)
        return time.monotonic() - started

    def step(self, rate: float, duration_s: float, kind: str) -> dict:
        """Write at ``rate`` for ``duration_s`` and judge whether the capture kept up."""
        capture = self.capture
        assert capture is not None
        waited_s = self.wait_quiescent()
        workdir = self.stack.workdir / f"step-{int(rate)}-{kind}-{len(self.steps)}"
        before = capture.samples()
        pids = {"capture": capture.pid, **self.stack.pids()}
        cpu_before = common.cpu_snapshot(pids)
        redis_cpu_before = common.redis_cpu_s(self.client)
        profiler = self._start_profiler(rate, duration_s, kind)
        started = time.monotonic()
        writer = common.start_writer(self.stack, workdir, rate_per_s=rate, duration_s=duration_s,
                                     echo_keys=self.args.echo_keys, seed=len(self.steps) + 1)
        cpu_before.update(common.cpu_snapshot({"writer": writer.pid}))
        pending_max = omem_max = 0
        rss_max = 0
        while writer.process.poll() is None:
            time.sleep(1.0)
            samples = capture.samples()
            pending_max = max(pending_max, int(common.metric_sum(samples, "echoseen_capture_pending_keys")))
            omem_max = max(omem_max, self._subscriber_omem())
            rss_max = max(rss_max, common.read_rss_bytes(capture.pid) or 0)
        cpu_writer = common.cpu_snapshot({"writer": writer.pid})
        written = writer.result()
        writer_done = time.monotonic()

        # Drain: every notification counted and nothing pending.
        expected = NOTIFICATIONS_PER_SETEX * written["echo_writes"]
        notified_before = common.metric_sum(before, "echoseen_capture_notifications_total")

        def drained() -> bool:
            samples = capture.samples()
            notified = common.metric_sum(samples, "echoseen_capture_notifications_total") - notified_before
            return notified >= expected and common.metric_sum(samples, "echoseen_capture_pending_keys") == 0

        drained_in_time = common.wait_for(drained, timeout_s=DRAIN_LIMIT_S, interval_s=0.1)
        if not drained_in_time:
            common.wait_for(drained, timeout_s=120, interval_s=0.5)
        drain_s = time.monotonic() - writer_done
        elapsed_s = time.monotonic() - started
        after = capture.samples()
        cpu_after = common.cpu_snapshot(pids)
        cpu_after.update(cpu_writer)
        redis_cpu_s = common.redis_cpu_s(self.client) - redis_cpu_before
        if profiler is not None:
            profiler.wait(timeout=duration_s + 60)

        read_to_ack = common.histogram_summary(common.bucket_delta(
            common.histogram_buckets(before, "echoseen_capture_read_to_ack_seconds"),
            common.histogram_buckets(after, "echoseen_capture_read_to_ack_seconds")))
        gaps = common.metric_sum(after, "echoseen_capture_gaps_total") - common.metric_sum(
            before, "echoseen_capture_gaps_total")
        notified = common.metric_sum(after, "echoseen_capture_notifications_total") - notified_before
        published = common.metric_sum(after, "echoseen_capture_events_published_total", origin="live") - \
            common.metric_sum(before, "echoseen_capture_events_published_total", origin="live")
        coalesced = common.metric_sum(after, "echoseen_capture_coalesced_total") - common.metric_sum(
            before, "echoseen_capture_coalesced_total")
        writer_ok = written["rate_per_s"] >= WRITER_SHORTFALL * rate
        checks = {
            "no_gap": gaps == 0,
            "pending_bounded": pending_max <= rate and omem_max < PUBSUB_SOFT_LIMIT_BYTES,
            "p99_under_1s": read_to_ack["p99_s"] is not None and read_to_ack["p99_s"] < 1.0,
            "drained_within_2s": drained_in_time,
        }
        result = {
            "kind": kind,
            "target_rate_per_s": rate,
            "waited_for_catchup_s": round(waited_s, 1),
            "writer": written,
            "writer_limited": not writer_ok,
            "kept_up": writer_ok and all(checks.values()),
            "checks": checks,
            "gaps": int(gaps),
            "pending_max": pending_max,
            "subscriber_omem_max_bytes": omem_max,
            "read_to_ack": read_to_ack,
            "notifications": int(notified),
            "notifications_expected": expected,
            "published_live": int(published),
            "coalesced": int(coalesced),
            "drain_s": round(drain_s, 2),
            "capture_rss_max_mib": round(rss_max / common.MIB, 1),
            "cpu": common.cpu_delta(cpu_before, cpu_after, elapsed_s),
            "redis_cpu_s": round(redis_cpu_s, 2),
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
        log.info("step %s %.0f/s: kept_up=%s checks=%s writer %.0f/s pending_max %d omem_max %d p99 %s drain %.1f s",
                 kind, rate, result["kept_up"], checks, written["rate_per_s"], pending_max, omem_max,
                 read_to_ack["p99_s"], drain_s)
        self.steps.append(result)
        return result

    def _start_profiler(self, rate: float, duration_s: float, kind: str):
        if not self.args.profile_dir or kind != "full":
            return None
        import subprocess  # noqa: PLC0415 - only for profiling

        directory = Path(self.args.profile_dir)
        directory.mkdir(parents=True, exist_ok=True)
        output = directory / f"capture-{int(rate)}.collapsed.txt"
        py_spy = str(Path(common.PYTHON).with_name("py-spy"))
        return subprocess.Popen([py_spy, "record", "--pid", str(self.capture.pid), "--duration",
                                 str(int(duration_s)), "--rate", "100", "--gil", "--format", "raw", "--output", str(output)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    # -- search ---------------------------------------------------------------

    def search(self) -> dict:
        args = self.args
        target = self.step(args.target, args.duration, "full")
        if args.no_search:
            return {"target_step_kept_up": target["kept_up"],
                    "max_sustained_writes_per_s": args.target if target["kept_up"] else None}

        highest_probe = None
        if target["kept_up"]:
            rate = args.target + args.step
            while rate <= args.max_rate:
                probe = self.step(rate, args.probe_duration, "probe")
                if not probe["kept_up"]:
                    break
                highest_probe = rate
                rate += args.step
            candidates = [] if highest_probe is None else [highest_probe - index * args.step for index in range(3)]
            candidates = [rate for rate in candidates if rate > args.target]
        else:
            candidates = [args.target - index * args.step for index in range(1, 4)]
            candidates = [rate for rate in candidates if rate > 0]

        best = args.target if target["kept_up"] else None
        for rate in candidates:
            confirmed = self.step(rate, args.duration, "full")
            if confirmed["kept_up"]:
                best = max(best or 0, rate)
                break
        return {"target_step_kept_up": target["kept_up"], "highest_probe_kept_up": highest_probe,
                "max_sustained_writes_per_s": best}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.setup_logging(args.verbose)
    result: dict = {"benchmark": "capture", "date": common.utc_now_text(), "machine": common.machine_facts(),
                    "command": " ".join([".venv/bin/python", "bench/bench_capture.py", *sys.argv[1:]]),
                    "channel_mode": args.channel_mode}
    notify = "Kg$xe" if args.channel_mode == "keyspace" else "Eg$xe"
    with common.Stack("capture", redis_url=args.redis, kafka=args.kafka, notify_keyspace_events=notify,
                      keep=args.keep) as stack, common.LoadSampler() as load_sampler:
        result["stack_startup_s"] = stack.startup_s
        bench = CaptureBench(args, stack)
        baseline_before = bench.baseline("baseline-before")
        log.info("baseline before: %s", baseline_before)
        bench.start_capture()
        try:
            search = bench.search()
        finally:
            status = bench.stop_capture()
        baseline_after = bench.baseline("baseline-after")
        log.info("baseline after: %s", baseline_after)

        rates = [run["drained_writes_per_s"] for run in (baseline_before, baseline_after) if run["drained_writes_per_s"]]
        baseline_rate = sum(rates) / len(rates) if rates else None
        best = search["max_sustained_writes_per_s"]
        result["baseline"] = {"before": baseline_before, "after": baseline_after,
                              "mean_drained_writes_per_s": round(baseline_rate) if baseline_rate else None}
        result["steps"] = bench.steps
        result["search"] = search
        result["capture_exit_status"] = status
        result["figures"] = {
            "max_sustained_writes_per_s": best,
            "baseline_writes_per_s": round(baseline_rate) if baseline_rate else None,
            "ratio": common.ratio(best, baseline_rate),
            "target_met": bool(best and best >= TARGET_WRITES_PER_S),
        }
        result["load_average"] = load_sampler.summary()
    common.emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
