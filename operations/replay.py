"""Move the replicator group's committed offsets so it reprocesses (or skips) records of the event topic.

Choose exactly one target:
  --to-earliest          the first offset still stored in each partition
  --to-offset P:O        offset O in partition P (repeatable); a bare O applies to
                         every partition not named by a P:O
  --to-datetime TIME     the first record at or after TIME (ISO 8601 with an explicit
                         timezone, e.g. 2024-05-01T10:00:00Z); partitions with no
                         record after TIME go to their end
  --shift-by N           the current position plus N (negative to reprocess)

Targets outside a partition's stored range are clamped to it. A partition
where the group never committed counts as positioned at its earliest offset,
where a new group starts. --partitions restricts the change to some
partitions.

The command prints the plan (partition, current, new, records to reprocess
or skip) and changes nothing unless --execute is given. It refuses to
execute while the group has active members, and names them: stop every
replicator first, because Kafka only accepts new offsets for a group without
members. Replays are safe for Kask: the replicator never writes an older seen
time over a newer one.

Exit status: 0 (plan printed, or offsets committed), 1 when the group has
active members or Kafka rejected the change, 2 for invalid options or a
missing topic, 3 when Kafka is unreachable.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from datetime import datetime

from echoseen.config import Config
from echoseen.errors import EXIT_FAILED, EXIT_OK, ConfigError
from operations import kafkaops
from operations.output import add_json_argument, add_timeout_argument, format_time_ms, print_json, render_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedMove:
    partition: int
    committed: int | None
    current: int
    new: int
    log_start: int
    log_end: int
    note: str = ""

    @property
    def reprocess(self) -> int:
        return max(0, self.current - self.new)

    @property
    def skip(self) -> int:
        return max(0, self.new - self.current)


@dataclass(frozen=True)
class Target:
    """An operator's request, parsed: one mode and its argument."""

    mode: str  # earliest, offset, datetime or shift
    offsets: dict[int, int] | None = None
    default_offset: int | None = None
    timestamp_ms: int | None = None
    shift: int | None = None

    def describe(self) -> str:
        if self.mode == "earliest":
            return "the earliest offsets"
        if self.mode == "datetime":
            return f"the first records at or after {format_time_ms(self.timestamp_ms)}"
        if self.mode == "shift":
            return f"the current positions shifted by {self.shift:+d}"
        return "the given offsets"


def parse_datetime(text: str) -> int:
    """Parse an ISO 8601 datetime with an explicit timezone into epoch milliseconds."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"invalid --to-datetime {text!r}: expected ISO 8601 such as 2024-05-01T10:00:00Z or "
                          "2024-05-01T12:00:00+02:00") from None
    if moment.tzinfo is None:
        raise ConfigError(f"--to-datetime {text!r} has no timezone; add one (Z for UTC, or an offset such as "
                          "+02:00), because the broker compares record timestamps in UTC")
    return int(moment.timestamp() * 1000)


def parse_offsets(values: list[str]) -> tuple[dict[int, int], int | None]:
    """Parse repeated --to-offset values: P:O for one partition, a bare O for every other partition."""
    offsets: dict[int, int] = {}
    default: int | None = None
    for value in values:
        partition_text, separator, offset_text = value.rpartition(":")
        try:
            offset = int(offset_text)
            partition = int(partition_text) if separator else None
        except ValueError:
            raise ConfigError(f"invalid --to-offset {value!r}: expected PARTITION:OFFSET or OFFSET, as integers") \
                from None
        if offset < 0 or (partition is not None and partition < 0):
            raise ConfigError(f"invalid --to-offset {value!r}: partitions and offsets are not negative")
        if partition is None:
            if default is not None and default != offset:
                raise ConfigError(f"--to-offset gives two offsets for all partitions ({default} and {offset}); "
                                  "give one")
            default = offset
        else:
            offsets[partition] = offset
    return offsets, default


def parse_partitions(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        partitions = sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise ConfigError(f"invalid --partitions {text!r}: expected comma-separated partition numbers") from None
    if not partitions:
        raise ConfigError("--partitions is empty; give partition numbers such as 0,3,5")
    return partitions


def target_from_args(args: argparse.Namespace) -> Target:
    if args.to_earliest:
        return Target("earliest")
    if args.to_offset:
        offsets, default = parse_offsets(args.to_offset)
        return Target("offset", offsets=offsets, default_offset=default)
    if args.to_datetime is not None:
        return Target("datetime", timestamp_ms=parse_datetime(args.to_datetime))
    return Target("shift", shift=args.shift_by)


def make_plan(config: Config, admin, target: Target, group_id: str, topic: str, partitions: list[int] | None,
              timeout_s: float) -> list[PlannedMove]:
    """Compute the new offset of each selected partition; changes nothing."""
    all_partitions = kafkaops.partition_ids(config, admin, topic, timeout_s)
    selected = all_partitions if partitions is None else partitions
    unknown = sorted(set(selected) - set(all_partitions))
    if unknown:
        raise ConfigError(f"topic {topic!r} has partitions {all_partitions[0]}-{all_partitions[-1]}; "
                          f"--partitions names {', '.join(map(str, unknown))}")
    if target.mode == "offset":
        unknown = sorted(set(target.offsets or {}) - set(all_partitions))
        if unknown:
            raise ConfigError(f"--to-offset names partition {unknown[0]}, but topic {topic!r} has partitions "
                              f"{all_partitions[0]}-{all_partitions[-1]}")
        named = set(target.offsets or {})
        if target.default_offset is None:
            # Without a bare offset, only the named partitions move.
            selected = [partition for partition in selected if partition in named]
            if not selected:
                raise ConfigError("--to-offset names no partition inside --partitions; nothing to move")

    bounds = kafkaops.watermarks(config, admin, topic, selected, timeout_s)
    committed = kafkaops.committed_offsets(config, group_id, topic, selected, timeout_s)
    by_time: dict[int, int | None] = {}
    if target.mode == "datetime":
        by_time = kafkaops.offsets_for_time(config, topic, selected, target.timestamp_ms, timeout_s)

    plan = []
    for partition in selected:
        low, high = bounds[partition].low, bounds[partition].high
        offset = committed[partition]
        current = low if offset is None or offset < low else min(offset, high)
        note = ""
        if target.mode == "earliest":
            requested = low
        elif target.mode == "offset":
            requested = (target.offsets or {}).get(partition, target.default_offset)
        elif target.mode == "datetime":
            requested = by_time.get(partition)
            if requested is None:
                requested = high
                note = "no record at or after the time: end of partition"
        else:
            requested = current + (target.shift or 0)
        new = min(max(requested, low), high)
        if new != requested and not note:
            note = f"{requested} clamped to the stored range {low}-{high}"
        if offset is None:
            note = "; ".join(filter(None, ["never committed: the group would start at the earliest offset", note]))
        plan.append(PlannedMove(partition, offset, current, new, low, high, note))
    return plan


def render_plan(plan: list[PlannedMove], group_id: str, topic: str, target: Target) -> str:
    rows = [(move.partition, "-" if move.committed is None else move.committed, move.current, move.new,
             move.reprocess, move.skip, move.note) for move in plan]
    reprocess = sum(move.reprocess for move in plan)
    skip = sum(move.skip for move in plan)
    rows.append(("total", "", "", "", reprocess, skip, ""))
    table = render_table(("PARTITION", "COMMITTED", "CURRENT", "NEW", "REPROCESS", "SKIP", "NOTE"), rows)
    return f"replay plan for group {group_id} on topic {topic}: move to {target.describe()}\n{table}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    modes = parser.add_mutually_exclusive_group(required=True)
    modes.add_argument("--to-earliest", action="store_true", help="move to the earliest stored offset")
    modes.add_argument("--to-offset", action="append", metavar="P:O|O",
                       help="move partition P to offset O (repeatable); a bare O applies to every other partition")
    modes.add_argument("--to-datetime", metavar="TIME",
                       help="move to the first record at or after TIME, ISO 8601 with a timezone "
                            "(e.g. 2024-05-01T10:00:00Z)")
    modes.add_argument("--shift-by", type=int, metavar="N",
                       help="move by N records from the current position (negative reprocesses), clamped to the "
                            "stored range")
    parser.add_argument("--partitions", metavar="LIST",
                        help="comma-separated partitions to change (default: all)")
    parser.add_argument("--group", metavar="GROUP_ID", help="consumer group (default: [replicator] group_id)")
    parser.add_argument("--execute", action="store_true",
                        help="commit the new offsets; without it only the plan is printed")
    add_json_argument(parser)
    add_timeout_argument(parser)


def run(args: argparse.Namespace, config: Config) -> int:
    target = target_from_args(args)
    partitions = parse_partitions(args.partitions)
    group_id = args.group or config.replicator.group_id
    topic = config.kafka.topic

    admin = kafkaops.connect_admin(config, args.timeout_s)
    plan = make_plan(config, admin, target, group_id, topic, partitions, args.timeout_s)
    group = kafkaops.describe_group(config, admin, group_id, topic, args.timeout_s)

    document = {
        "group_id": group_id, "topic": topic, "target": asdict(target),
        "plan": [dict(asdict(move), reprocess=move.reprocess, skip=move.skip) for move in plan],
        "total_reprocess": sum(move.reprocess for move in plan),
        "total_skip": sum(move.skip for move in plan),
        "active_members": [asdict(member) for member in group.members],
        "executed": False,
    }
    if not args.json:
        print(render_plan(plan, group_id, topic, target))

    if group.members:
        lines = [f"group {group_id} has {len(group.members)} active member{'s' if len(group.members) != 1 else ''} "
                 f"(state {group.state}); stop every member before replaying:"]
        lines += [f"  - {member.describe()}" for member in group.members]
        if args.json:
            document["error"] = "\n".join(lines)
            print_json(document)
        else:
            print("\n".join(lines))
            print("nothing changed" if args.execute else "dry run: --execute would be refused until they stop")
        return EXIT_FAILED if args.execute else EXIT_OK

    if not args.execute:
        if args.json:
            print_json(document)
        else:
            print("dry run: nothing changed; add --execute to commit these offsets")
        return EXIT_OK

    kafkaops.alter_committed_offsets(config, group_id, topic, {move.partition: move.new for move in plan},
                                     args.timeout_s)
    after = kafkaops.committed_offsets(config, group_id, topic, [move.partition for move in plan],
                                       args.timeout_s)
    wrong = [move.partition for move in plan if after.get(move.partition) != move.new]
    log.info("replay: group %s on %s moved %d partitions to %s (%d records to reprocess)", group_id, topic,
             len(plan), target.describe(), document["total_reprocess"])
    document["executed"] = not wrong
    if args.json:
        print_json(document)
    elif wrong:
        print(f"committed, but reading back differs for partitions {wrong}; run `echoseen lag` to see the offsets")
    else:
        print(f"committed new offsets for {len(plan)} partition{'s' if len(plan) != 1 else ''}; start the "
              "replicator to reprocess")
    return EXIT_FAILED if wrong else EXIT_OK
