"""Snapshot the existing Echo seen-time keys into the event topic, or report how far back they go.

Keys written before the capture started exist only in Redis. The backfill
SCANs every configured Redis server (every primary of a Redis Cluster), reads
each watched key's value, expiry and server time atomically, and publishes an
origin "snapshot" event to [kafka] topic, the topic the capture uses. The
replicator applies events monotonically, so the order between snapshot and
live events does not matter and duplicates are harmless.

  echoseen backfill                      copy every watched key
  echoseen backfill --wiki enwiki        canary: copy one wiki's keys (repeatable)
  echoseen backfill --resume             continue after a crash, Ctrl+C or SIGTERM
  echoseen backfill --report             publish nothing; count keys per wiki, type and age
  echoseen backfill --cutoff 2024-01-01  copy only keys seen on or after that date

The scan position is checkpointed in [backfill] checkpoint_file and only
moves past keys that Kafka acknowledged. Bad values and placeholders are
counted and reported, never published. Exit status: 0 done (or stopped by
SIGTERM), 1 failed, 2 invalid configuration or options, 3 Redis or Kafka
unavailable, 130 stopped by Ctrl+C.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from capture import backfill_checkpoint
from capture.backfill_checkpoint import Checkpoint
from capture.backfill_plan import Plan, build_plan, parse_cutoff
from capture.backfill_progress import Progress
from capture.backfill_report import ReportJob, render_report, render_summary
from capture.backfill_snapshot import SnapshotJob
from capture.publisher import Publisher
from capture.sources import Source, discover_primaries, ping
from echoseen.config import Config
from echoseen.errors import EXIT_INTERRUPTED, EXIT_OK, ConfigError, EchoseenError, ServiceUnavailable
from echoseen.kafka import admin_client, describe_topic_problems

log = logging.getLogger(__name__)

PUBLISHER_CLOSE_TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wiki", action="append", metavar="WIKI",
                        help="copy only this wiki's seen-time keys, e.g. enwiki, or global for cross-wiki ones; "
                             "repeat for several wikis")
    parser.add_argument("--pattern", action="append", metavar="GLOB",
                        help="copy only keys that match this Redis glob too (SCAN MATCH syntax); repeatable")
    parser.add_argument("--cutoff", metavar="DATE",
                        help="copy only keys seen at or after this ISO 8601 date or datetime, UTC when no zone "
                             "is given (overrides [backfill] cutoff)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the backfill recorded in [backfill] checkpoint_file")
    parser.add_argument("--restart", action="store_true",
                        help="discard an existing checkpoint and start the backfill from the beginning")
    parser.add_argument("--report", action="store_true",
                        help="publish nothing; print how many keys per wiki and type fall in each age bucket")
    parser.add_argument("--as-of", metavar="DATETIME",
                        help="with --report: the time ages are relative to, ISO 8601 (default: now)")
    parser.add_argument("--json", action="store_true", help="print the summary or the report as JSON")


class _StopSignals:
    """SIGINT and SIGTERM set the stop flag; a second SIGINT stops at once."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            # The checkpoint on disk only ever covers acknowledged keys, so stopping hard is safe.
            raise KeyboardInterrupt
        self.received = signum
        self.stop.set()
        log.warning("received %s: stopping after the current batch; waiting for Kafka's acknowledgements and "
                    "writing the checkpoint (Ctrl+C again stops at once)", signal.Signals(signum).name)


def _validate(config: Config, args: argparse.Namespace) -> None:
    backfill = config.backfill
    for name in ("scan_count", "read_batch_size"):
        if getattr(backfill, name) < 1:
            raise ConfigError(f"[backfill] {name} is {getattr(backfill, name)}; it must be at least 1")
    if not backfill.checkpoint_file and not args.report:
        raise ConfigError("[backfill] checkpoint_file is empty; name the file that keeps the scan position")
    if args.resume and args.restart:
        raise ConfigError("--resume and --restart exclude each other: --resume continues the checkpoint, "
                          "--restart discards it")
    if args.report and (args.resume or args.restart):
        raise ConfigError("--report publishes nothing and keeps no checkpoint; drop --resume and --restart")
    if args.as_of and not args.report:
        raise ConfigError("--as-of only applies to --report")


def resume_command(args: argparse.Namespace) -> str:
    """Build the command line that continues this run from its checkpoint."""
    argv = ["echoseen", "backfill", "--resume"]
    if getattr(args, "config", None):
        argv += ["--config", args.config]
    for wiki in args.wiki or []:
        argv += ["--wiki", wiki]
    for pattern in args.pattern or []:
        argv += ["--pattern", pattern]
    if args.cutoff:
        argv += ["--cutoff", args.cutoff]
    if args.json:
        argv.append("--json")
    return shlex.join(argv)


def connect_sources(config: Config) -> list[Source]:
    """Find the sources (every primary of a cluster), PING each one and log what was reached."""
    sources = discover_primaries(config)
    for source in sources:
        info = ping(config, source)
        log.info("connected to Redis %s: version %s, run_id %s", source.name, info.get("redis_version"),
                 info.get("run_id"))
    return sources


def check_kafka(config: Config) -> None:
    """Fail with a clear message when Kafka is unreachable (exit 3) or the event topic is missing (exit 2)."""
    problems = describe_topic_problems(config, admin_client(config))
    topic_problems = [problem for problem in problems if problem.startswith(f"topic {config.kafka.topic!r}")]
    for problem in problems:
        if problem not in topic_problems:
            log.warning("%s (the backfill only writes [kafka] topic, so it goes on)", problem)
    if topic_problems:
        # A missing topic is a setup mistake, not an outage: exit 2 like the daemons do, so no restart loop retries it.
        raise ConfigError("; ".join(topic_problems) + " (set by [kafka] topic)")


def load_checkpoint(config: Config, plan: Plan, args: argparse.Namespace, sources: list[Source]) -> Checkpoint:
    """Return the checkpoint to continue (--resume) or a new one; reject a checkpoint of other settings."""
    path = Path(config.backfill.checkpoint_file)
    existing = backfill_checkpoint.load(path)
    settings = plan.checkpoint_settings(config)
    if args.resume:
        if existing is None:
            raise ConfigError(f"--resume: there is no checkpoint at {str(path)!r} ([backfill] checkpoint_file); "
                              "run without --resume to start a new backfill")
        differences = backfill_checkpoint.settings_differences(existing.settings, settings)
        if differences:
            raise ConfigError(f"the checkpoint {str(path)!r} was written with other settings, so resuming would "
                              f"copy another set of keys: {'; '.join(differences)}. Rerun with the checkpoint's "
                              "settings, or pass --restart to discard it and start over")
        names = {source.name for source in sources}
        for name in sorted(set(existing.servers) - names):
            log.warning("the checkpoint has an entry for %s, which is no longer a source (a cluster failover "
                        "moves its keys to another primary, which is scanned instead); dropping the entry", name)
            del existing.servers[name]
        log.info("resuming the backfill started at %s from %s", existing.started_at, path)
        return existing
    if existing is not None and not args.restart:
        state = "complete" if existing.finished else "unfinished"
        raise ConfigError(f"an {state} backfill checkpoint from {existing.started_at} exists at {str(path)!r} "
                          "([backfill] checkpoint_file); pass --resume to continue it, or --restart to discard it "
                          "and start over")
    if existing is not None:
        log.warning("--restart: discarding the checkpoint at %s and starting from the beginning", path)
    return Checkpoint(settings=settings, started_at=backfill_checkpoint.utc_now_text())


def run(args: argparse.Namespace, config: Config) -> int:
    status, result = execute(args, config)
    print(json.dumps(result, indent=2) if args.json else
          render_report(result) if args.report else render_summary(result))
    sys.stdout.flush()
    return status


def execute(args: argparse.Namespace, config: Config) -> tuple[int, dict[str, Any]]:
    """Run the report or the snapshot; return the exit status and the report or summary as plain data."""
    _validate(config, args)
    plan = build_plan(config, args.wiki, args.pattern, args.cutoff)
    as_of = parse_cutoff(args.as_of, "--as-of") if args.as_of else datetime.now(timezone.utc)
    mode = "report" if args.report else "snapshot"
    log.info("echoseen backfill (%s) starting: %s", mode, config.summary())
    log.info("selection: %s", plan.describe())

    sources = connect_sources(config)
    stop = threading.Event()
    signals = _StopSignals(stop)
    progress = Progress(config.backfill.progress_log_interval_s,
                        "keys read" if args.report else "published")
    signals.install()
    try:
        if args.report:
            report = ReportJob(config, plan, sources, as_of, stop, progress).run()
            return _exit_status(report["status"], signals.received, None), report

        checkpoint = load_checkpoint(config, plan, args, sources)
        check_kafka(config)
        publisher = Publisher(config, client_id="echoseen-backfill")
        log.info("publishing to topic %s (%d partitions) at %s", config.kafka.topic, publisher.partition_count(),
                 config.kafka.bootstrap_servers)
        job = SnapshotJob(config, plan, sources, checkpoint, Path(config.backfill.checkpoint_file), stop, progress,
                          resumed=args.resume)
        try:
            summary = job.run(publisher)
        except KeyboardInterrupt:
            publisher.close(0)
            raise
        publisher.close(PUBLISHER_CLOSE_TIMEOUT_S)
    finally:
        signals.restore()

    if summary["status"] != "complete":
        summary["resume_command"] = resume_command(args)
    this_run = summary["this_run"]
    log.info("backfill %s: %d keys scanned, %d published, skipped %s, bad values %s in %.1f s",
             summary["status"], this_run["scanned"], this_run["published"], this_run["skipped"],
             this_run["bad_values"], summary["duration_s"])
    if summary["status"] != "complete":
        log.warning("the backfill is %s; continue it with: %s", summary["status"], summary["resume_command"])
    return _exit_status(summary["status"], signals.received, job.failure), summary


def _exit_status(status: str, received: int | None, failure: EchoseenError | None) -> int:
    if status == "failed":
        return failure.exit_status if failure is not None else ServiceUnavailable.exit_status
    if status == "interrupted" and received == signal.SIGINT:
        return EXIT_INTERRUPTED
    if status == "interrupted" and received is None:
        return EchoseenError.exit_status
    return EXIT_OK
