"""One screen of migration health, from any host with the same configuration: everything comes from Kafka.

For each captured Redis source it shows the age of the capture's heartbeat
(its last write to [kafka] state_topic), the age of its watermark (the time
up to which every change is known to be in Kafka), and its open and recent
gaps with their window, reasons and catch-up scan progress. Below come the
replicator group's lag (as `echoseen lag` measures it), the number of
records in [kafka] dead_letter_topic and the result of the last
`echoseen verify`.

Exit status: 0 when all is well; 1 when something needs attention: a
heartbeat older than --max-heartbeat-age, an open gap older than
--max-gap-age, more dead letters than --max-dead-letters, lag over
--max-lag-records or --max-lag-seconds (when given), no capture state at all,
or a missing topic; 3 when Kafka is unreachable.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import KafkaException

from capture import state as state_store
from echoseen.config import Config
from echoseen.errors import EXIT_FAILED, EXIT_OK
from operations import kafkaops, lag as lag_module
from operations.output import (add_json_argument, add_timeout_argument, format_seconds, format_time_ms,
                               non_negative_float, non_negative_int, print_json, render_table)

log = logging.getLogger(__name__)

RECENT_GAPS_SHOWN = 5


@dataclass
class CaptureStatus:
    source: str
    instance: str | None
    host: str | None
    pid: int | None
    stopped: bool
    updated_wall_ms: int | None
    heartbeat_age_s: float | None
    watermark_us: int | None
    watermark_age_s: float | None
    open_gaps: list[dict[str, Any]]
    recent_gaps: list[dict[str, Any]]
    counters: dict[str, Any]


@dataclass
class Status:
    checked_at_ms: int
    captures: list[CaptureStatus] = field(default_factory=list)
    replicator: dict[str, Any] | None = None
    dead_letters: dict[str, Any] | None = None
    verify: dict[str, Any] | None = None
    attention: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["ok"] = not self.attention
        return document


@dataclass(frozen=True)
class Thresholds:
    max_heartbeat_age_s: float
    max_gap_age_s: float
    max_dead_letters: int
    max_lag_records: int | None
    max_lag_seconds: float | None


def capture_status(document: dict[str, Any], now_ms: int) -> CaptureStatus:
    updated = document.get("updated_wall_ms")
    watermark = document.get("watermark_us")
    # The watermark is on the Redis server's clock; against this host's clock its age is approximate.
    return CaptureStatus(
        source=str(document.get("source", "?")),
        instance=document.get("instance"),
        host=document.get("host"),
        pid=document.get("pid"),
        stopped=bool(document.get("stopped")),
        updated_wall_ms=updated,
        heartbeat_age_s=None if updated is None else max(0.0, (now_ms - updated) / 1000),
        watermark_us=watermark,
        watermark_age_s=None if watermark is None else max(0.0, (now_ms * 1000 - watermark) / 1e6),
        open_gaps=list(document.get("open_gaps") or []),
        recent_gaps=list(document.get("recent_gaps") or [])[-RECENT_GAPS_SHOWN:],
        counters=dict(document.get("counters") or {}),
    )


def collect(config: Config, thresholds: Thresholds, timeout_s: float) -> Status:
    """Read every piece of state from Kafka and list what needs attention."""
    admin = kafkaops.connect_admin(config, timeout_s)
    now_ms = int(time.time() * 1000)
    status = Status(checked_at_ms=now_ms)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise kafkaops.unreachable(config, exc) from exc

    # Capture and verify documents.
    if config.kafka.state_topic in existing:
        documents = state_store.read_all(config, timeout_s=max(timeout_s, 10.0))
    else:
        documents = {}
        status.attention.append(f"state topic {config.kafka.state_topic!r} does not exist; create it with "
                                "`echoseen topics --create`")
    for key, document in sorted(documents.items()):
        if key.startswith(state_store.CAPTURE_PREFIX):
            status.captures.append(capture_status(document, now_ms))
    status.verify = documents.get(state_store.VERIFY_KEY)
    check_captures(status, thresholds, now_ms)

    # Replicator lag.
    if config.kafka.topic in existing:
        lag = lag_module.measure_lag(config, timeout_s=timeout_s, admin=admin, now_ms=now_ms)
        status.replicator = lag.to_json()
        status.attention += [f"replicator {violation}" for violation in
                             lag_module.threshold_violations(lag, thresholds.max_lag_records,
                                                             thresholds.max_lag_seconds)]
    else:
        status.attention.append(f"event topic {config.kafka.topic!r} does not exist; create it with "
                                "`echoseen topics --create`")

    # Dead letters.
    topic = config.kafka.dead_letter_topic
    if topic in existing:
        partitions = kafkaops.partition_ids(config, admin, topic, timeout_s)
        bounds = kafkaops.watermarks(config, admin, topic, partitions, timeout_s)
        count = sum(bound.records for bound in bounds.values())
        status.dead_letters = {"topic": topic, "records": count}
        if count > thresholds.max_dead_letters:
            status.attention.append(f"{plural(count, 'record')} in dead-letter topic {topic!r} (over "
                                    f"--max-dead-letters {thresholds.max_dead_letters}); inspect them with "
                                    "`echoseen dead-letters`")
    else:
        status.attention.append(f"dead-letter topic {topic!r} does not exist; create it with "
                                "`echoseen topics --create`")
    return status


def check_captures(status: Status, thresholds: Thresholds, now_ms: int) -> None:
    if not status.captures:
        status.attention.append("no capture has written its state yet: start `echoseen capture` (or check that "
                                "it uses the same [kafka] state_topic)")
    for capture in status.captures:
        age = capture.heartbeat_age_s
        if age is None or age > thresholds.max_heartbeat_age_s:
            state_text = "stopped cleanly" if capture.stopped else "last heartbeat"
            status.attention.append(
                f"capture of {capture.source}: {state_text} {format_seconds(age)} ago (over --max-heartbeat-age "
                f"{thresholds.max_heartbeat_age_s:g} s), instance {capture.instance} on {capture.host}")
        for gap in capture.open_gaps:
            gap_age_s = max(0.0, (now_ms * 1000 - int(gap.get("start_us", 0))) / 1e6)
            if gap_age_s > thresholds.max_gap_age_s:
                status.attention.append(
                    f"capture of {capture.source}: gap {gap.get('id')} ({', '.join(gap.get('reasons') or [])}) has "
                    f"been open for {format_seconds(gap_age_s)} (over --max-gap-age {thresholds.max_gap_age_s:g} s);"
                    f" catch-up scan {scan_progress(gap)}")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def scan_progress(gap: dict[str, Any]) -> str:
    if not gap.get("scan_started"):
        return "not started"
    return (f"at cursor {gap.get('cursor')}, {gap.get('scanned_keys', 0)} keys scanned, "
            f"{gap.get('published_keys', 0)} published")


def gap_window(gap: dict[str, Any]) -> str:
    return f"{format_time_ms(gap.get('start_us', 0) / 1000)} .. {format_time_ms(gap.get('end_us', 0) / 1000)}"


def render(status: Status, config: Config) -> str:
    lines = [f"echoseen status at {format_time_ms(status.checked_at_ms)} (Kafka {config.kafka.bootstrap_servers})",
             "", "capture"]
    if status.captures:
        rows = [(capture.source, capture.instance or "-", f"{capture.host}:{capture.pid}",
                 "stopped" if capture.stopped else "running", format_seconds(capture.heartbeat_age_s),
                 format_seconds(capture.watermark_age_s), len(capture.open_gaps),
                 capture.counters.get("published", "-")) for capture in status.captures]
        lines.append(render_table(("SOURCE", "INSTANCE", "HOST:PID", "STATE", "HEARTBEAT-AGE", "WATERMARK-AGE",
                                   "OPEN-GAPS", "PUBLISHED"), rows))
    else:
        lines.append("  no capture state in the state topic")

    gap_rows = []
    for capture in status.captures:
        now_us = status.checked_at_ms * 1000
        for gap in capture.open_gaps:
            gap_rows.append((capture.source, gap.get("id"), "open", gap_window(gap),
                             format_seconds(max(0.0, (now_us - int(gap.get("start_us", 0))) / 1e6)),
                             ",".join(gap.get("reasons") or []), scan_progress(gap)))
        for gap in capture.recent_gaps:
            gap_rows.append((capture.source, gap.get("id"), "closed " + format_time_ms(
                (gap.get("closed_at_us") or 0) / 1000), gap_window(gap), "", ",".join(gap.get("reasons") or []),
                f"{gap.get('scanned_keys', 0)} scanned, {gap.get('published_keys', 0)} published"))
    if gap_rows:
        lines += ["", "gaps (open, and the last closed ones)",
                  render_table(("SOURCE", "GAP", "STATE", "WINDOW", "OPEN-FOR", "REASONS", "SCAN"), gap_rows)]

    lines += ["", "replicator"]
    if status.replicator is not None:
        replicator = status.replicator
        age = replicator["max_lag_seconds"]
        lines.append(f"  group {replicator['group_id']}: state {replicator['group_state']}, "
                     f"{plural(replicator['member_count'], 'member')}; "
                     f"lag {replicator['total_lag_records']} records, "
                     f"oldest unconsumed {'unknown' if age is None else format_seconds(age)} old")
    else:
        lines.append("  event topic missing")

    if status.dead_letters is not None:
        lines += ["", f"dead letters: {plural(status.dead_letters['records'], 'record')} in "
                      f"{status.dead_letters['topic']}"]

    lines += ["", "last verify"]
    lines.append("  " + describe_verify(status.verify, status.checked_at_ms))

    lines.append("")
    if status.attention:
        lines.append("needs attention:")
        lines += [f"  - {item}" for item in status.attention]
    else:
        lines.append("all good")
    return "\n".join(lines)


def describe_verify(document: dict[str, Any] | None, now_ms: int) -> str:
    if not document:
        return "none recorded; run `echoseen verify`"
    finished = document.get("finished_wall_ms")
    age = None if finished is None else max(0.0, (now_ms - finished) / 1000)
    verdict = "passed" if document.get("passed") else "FAILED"
    categories = ", ".join(f"{name}={count}" for name, count in sorted((document.get("categories") or {}).items()))
    return (f"{verdict} at {format_time_ms(finished)} ({format_seconds(age)} ago), {document.get('bad', 0)} bad; "
            f"scope {document.get('scope')}; {categories or 'no keys compared'}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-heartbeat-age", type=non_negative_float, default=30.0, metavar="SECONDS",
                        dest="max_heartbeat_age_s",
                        help="a capture heartbeat older than this needs attention (default: 30)")
    parser.add_argument("--max-gap-age", type=non_negative_float, default=600.0, metavar="SECONDS",
                        dest="max_gap_age_s",
                        help="a gap still open after this long needs attention (default: 600)")
    parser.add_argument("--max-dead-letters", type=non_negative_int, default=0, metavar="N",
                        help="more dead-letter records than N need attention (default: 0)")
    parser.add_argument("--max-lag-records", type=non_negative_int, metavar="N",
                        help="replicator lag over N records needs attention (default: not checked)")
    parser.add_argument("--max-lag-seconds", type=non_negative_float, metavar="SECONDS",
                        help="an oldest unconsumed record older than this needs attention (default: not checked)")
    add_json_argument(parser)
    add_timeout_argument(parser)


def run(args: argparse.Namespace, config: Config) -> int:
    thresholds = Thresholds(args.max_heartbeat_age_s, args.max_gap_age_s, args.max_dead_letters,
                            args.max_lag_records, args.max_lag_seconds)
    status = collect(config, thresholds, args.timeout_s)
    if args.json:
        document = status.to_json()
        document["thresholds"] = asdict(thresholds)
        print_json(document)
    else:
        print(render(status, config))
    return EXIT_FAILED if status.attention else EXIT_OK
