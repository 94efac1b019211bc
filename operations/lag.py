"""Show how far the replicator's consumer group is behind the event topic, per partition and in total.

For each partition of [kafka] topic it shows the committed offset of the
group [replicator] group_id, the log-end offset and the lag in records. The
lag in seconds is the age of the oldest record the group has not consumed
(0 when caught up). The record's timestamp is read by a separate consumer
that assigns the partition and never joins the group, so the check works
while the replicator runs, after it stopped, and for a group that has never
committed (its lag then counts from the earliest offset, where a new group
starts).

Exit status: 0, or 1 when --max-records or --max-seconds is exceeded, so the
command can drive an alert; 2 when the event topic does not exist; 3 when
Kafka is unreachable.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass, field

from confluent_kafka.admin import AdminClient

from echoseen.config import Config
from echoseen.errors import EXIT_FAILED, EXIT_OK
from operations import kafkaops
from operations.output import (add_json_argument, add_timeout_argument, format_seconds, format_time_ms,
                               non_negative_float, non_negative_int, print_json, render_table)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionLag:
    """The group's position in one partition.

    ``committed`` is None when the group has no committed offset there;
    ``position`` is where the group resumes: the committed offset, or the log
    start when nothing is committed. ``committed_below_log_start`` marks a
    committed offset whose records retention already deleted: the replicator
    (auto.offset.reset=error) stops such a partition instead of skipping
    ahead, so the lag counts from the log start until `echoseen replay` moves
    the offset. ``oldest_unconsumed_ms`` is the timestamp of the first record
    at or after ``position`` (None when caught up or when it could not be read
    in time).
    """

    partition: int
    committed: int | None
    log_start: int
    log_end: int
    position: int
    lag_records: int
    lag_seconds: float | None
    oldest_unconsumed_ms: int | None
    committed_below_log_start: bool = False


@dataclass(frozen=True)
class GroupLag:
    """Lag of one consumer group on one topic, measured at ``measured_at_ms`` (wall clock)."""

    topic: str
    group_id: str
    group_state: str
    member_count: int
    measured_at_ms: int
    partitions: list[PartitionLag] = field(default_factory=list)

    @property
    def total_records(self) -> int:
        return sum(partition.lag_records for partition in self.partitions)

    @property
    def max_seconds(self) -> float | None:
        """Age of the oldest unconsumed record over all partitions; None if a lagging partition's age is unknown."""
        ages = [partition.lag_seconds for partition in self.partitions]
        if any(age is None for age in ages):
            return None
        return max(ages, default=0.0)

    def to_json(self) -> dict:
        document = asdict(self)
        document["total_lag_records"] = self.total_records
        document["max_lag_seconds"] = self.max_seconds
        return document


def measure_lag(config: Config, *, group_id: str | None = None, topic: str | None = None,
                timeout_s: float = kafkaops.DEFAULT_TIMEOUT_S, admin: AdminClient | None = None,
                now_ms: int | None = None) -> GroupLag:
    """Measure a consumer group's lag on a topic, per partition.

    Defaults to [replicator] group_id on [kafka] topic. The replicator can call
    this periodically for its own lag metrics and pass its ``admin`` client to
    reuse it. Each call also opens and closes two short-lived consumers: one
    that reads the committed offsets and one that assigns the lagging
    partitions and reads one record from each.
    Offsets come from the Admin API, so measuring never joins or disturbs the
    group. Raises ServiceUnavailable when Kafka does not answer within
    ``timeout_s`` and TopicNotFound when the topic is missing.
    """
    group_id = group_id or config.replicator.group_id
    topic = topic or config.kafka.topic
    if admin is None:
        admin = kafkaops.connect_admin(config, timeout_s)

    partitions = kafkaops.partition_ids(config, admin, topic, timeout_s)
    bounds = kafkaops.watermarks(config, admin, topic, partitions, timeout_s)
    committed = kafkaops.committed_offsets(config, group_id, topic, partitions, timeout_s)
    group = kafkaops.describe_group(config, admin, group_id, topic, timeout_s)

    positions: dict[int, int] = {}
    for partition in partitions:
        offset = committed.get(partition)
        low, high = bounds[partition].low, bounds[partition].high
        # A new group starts at the log start; a committed offset that retention
        # deleted counts from there too (see PartitionLag).
        position = low if offset is None or offset < low else min(offset, high)
        positions[partition] = position

    lagging = {partition: position for partition, position in positions.items()
               if position < bounds[partition].high}
    timestamps = kafkaops.first_record_timestamps_ms(config, topic, lagging, timeout_s)
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)

    rows = []
    for partition in partitions:
        position = positions[partition]
        lag_records = bounds[partition].high - position
        oldest_ms = timestamps.get(partition)
        if lag_records <= 0:
            lag_seconds: float | None = 0.0
        elif oldest_ms is None:
            lag_seconds = None
        else:
            # Producer clocks can run ahead of this host's; a negative age means "just produced".
            lag_seconds = max(0.0, (now_ms - oldest_ms) / 1000)
        offset = committed.get(partition)
        rows.append(PartitionLag(partition, offset, bounds[partition].low, bounds[partition].high, position,
                                 max(0, lag_records), lag_seconds, oldest_ms,
                                 committed_below_log_start=offset is not None and offset < bounds[partition].low))
    return GroupLag(topic, group_id, group.state, len(group.members), now_ms, rows)


def threshold_violations(lag: GroupLag, max_records: int | None, max_seconds: float | None) -> list[str]:
    """Return one message per exceeded threshold; a lag whose age could not be read counts as exceeding."""
    violations = []
    if max_records is not None and lag.total_records > max_records:
        violations.append(f"lag of {lag.total_records} records exceeds --max-records {max_records}")
    if max_seconds is not None:
        age = lag.max_seconds
        if age is None:
            violations.append("the age of the oldest unconsumed record could not be read within the timeout, "
                              f"so --max-seconds {max_seconds:g} cannot be confirmed")
        elif age > max_seconds:
            violations.append(f"oldest unconsumed record is {age:.1f} s old, over --max-seconds {max_seconds:g}")
    return violations


def render(lag: GroupLag) -> str:
    header = (f"group {lag.group_id} on topic {lag.topic}: state {lag.group_state}, {lag.member_count} "
              f"member{'s' if lag.member_count != 1 else ''}, measured {format_time_ms(lag.measured_at_ms)}")
    rows = []
    for partition in lag.partitions:
        committed = "-" if partition.committed is None else partition.committed
        rows.append((partition.partition, committed, partition.log_start, partition.log_end, partition.lag_records,
                     format_lag_seconds(partition), format_time_ms(partition.oldest_unconsumed_ms)))
    rows.append(("total", "", "", "", lag.total_records,
                 "unknown" if lag.max_seconds is None else f"{lag.max_seconds:.1f} (max)", ""))
    table = render_table(("PARTITION", "COMMITTED", "LOG-START", "LOG-END", "LAG-RECORDS", "LAG-SECONDS",
                          "OLDEST-UNCONSUMED"), rows)
    notes = []
    if any(partition.committed is None for partition in lag.partitions):
        notes.append("COMMITTED '-': the group has no committed offset there and would start at LOG-START.")
    below = [str(partition.partition) for partition in lag.partitions if partition.committed_below_log_start]
    if below:
        notes.append(f"partitions {','.join(below)}: the committed offset is below LOG-START (deleted by retention); "
                     "the replicator stops there until `echoseen replay` moves the offset.")
    if any(partition.lag_seconds is None for partition in lag.partitions):
        notes.append("LAG-SECONDS 'unknown': no record could be read at the group's position within the timeout.")
    if lag.max_seconds:
        notes.append(f"oldest unconsumed record is {format_seconds(lag.max_seconds)} old.")
    return "\n".join([header, table, *notes])


def format_lag_seconds(partition: PartitionLag) -> str:
    return "unknown" if partition.lag_seconds is None else f"{partition.lag_seconds:.1f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", metavar="GROUP_ID",
                        help="consumer group to measure (default: [replicator] group_id)")
    parser.add_argument("--max-records", type=non_negative_int, metavar="N",
                        help="exit with status 1 when the total lag is over N records (default: no limit)")
    parser.add_argument("--max-seconds", type=non_negative_float, metavar="SECONDS",
                        help="exit with status 1 when the oldest unconsumed record is older than SECONDS "
                             "(default: no limit)")
    add_json_argument(parser)
    add_timeout_argument(parser)


def run(args: argparse.Namespace, config: Config) -> int:
    lag = measure_lag(config, group_id=args.group, timeout_s=args.timeout_s)
    violations = threshold_violations(lag, args.max_records, args.max_seconds)
    if args.json:
        document = lag.to_json()
        document["thresholds"] = {"max_records": args.max_records, "max_seconds": args.max_seconds}
        document["violations"] = violations
        print_json(document)
    else:
        print(render(lag))
        for violation in violations:
            print(f"ALERT: {violation}")
    return EXIT_FAILED if violations else EXIT_OK
