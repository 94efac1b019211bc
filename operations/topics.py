"""Check the Kafka topics the product needs, and create or fix them.

Checks [kafka] topic (events), dead_letter_topic and state_topic. Each must
exist, and the event topic must have [kafka] partitions partitions. Their
cleanup.policy, retention.ms, max.message.bytes and min.compaction.lag.ms
must match where the product sets them, except that retention and sizes may
be larger than expected (-1 means unlimited). Each problem is printed with
the command that fixes it.

--create creates missing topics with [kafka] partitions, replication_factor,
retention_ms and max_message_bytes. --fix sets the topic configs that differ
(incremental alter, other settings untouched). Neither changes a partition
count: adding partitions moves keys to other partitions and breaks the
per-key order the replicator relies on.

Exit status: 0 when every topic is right (after --create/--fix), 1 when a
problem remains, 3 when Kafka is unreachable.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from echoseen.config import Config
from echoseen.errors import EXIT_FAILED, EXIT_OK, EchoseenError
from echoseen.kafka import TopicProblem, check_topics, create_topics, topic_specs
from operations import kafkaops
from operations.output import add_json_argument, add_timeout_argument, print_json, render_table

log = logging.getLogger(__name__)

SHOWN_CONFIGS = ("cleanup.policy", "retention.ms", "max.message.bytes", "min.compaction.lag.ms")


@dataclass(frozen=True)
class TopicState:
    name: str
    purpose: str
    exists: bool
    partitions: int | None
    configs: dict[str, str]


def read_topic_states(config: Config, admin: AdminClient, timeout_s: float) -> list[TopicState]:
    """Read existence, partition count and the checked configs of every topic the product needs."""
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise kafkaops.unreachable(config, exc) from exc
    specs = topic_specs(config)
    existing = [spec for spec in specs
                if spec.name in metadata.topics and metadata.topics[spec.name].error is None]
    configs: dict[str, dict[str, str]] = {}
    if existing:
        resources = {spec.name: ConfigResource(ConfigResource.Type.TOPIC, spec.name) for spec in existing}
        futures = admin.describe_configs(list(resources.values()), request_timeout=timeout_s)
        for name, resource in resources.items():
            try:
                entries = futures[resource].result()
            except KafkaException as exc:
                raise kafkaops.unreachable(config, exc) from exc
            configs[name] = {key: entries[key].value for key in SHOWN_CONFIGS if key in entries}
    states = []
    for spec in specs:
        topic = metadata.topics.get(spec.name)
        exists = spec.name in configs
        states.append(TopicState(spec.name, spec.purpose, exists,
                                 len(topic.partitions) if exists and topic is not None else None,
                                 configs.get(spec.name, {})))
    return states


def fix_settings(config: Config, admin: AdminClient, problems: list[TopicProblem], timeout_s: float) -> list[str]:
    """Set every differing topic config to its expected value; return one line per change."""
    by_topic: dict[str, list[TopicProblem]] = {}
    for problem in problems:
        if problem.fix == "alter":
            by_topic.setdefault(problem.topic, []).append(problem)
    if not by_topic:
        return []
    resources = []
    for topic, topic_problems in by_topic.items():
        entries = [ConfigEntry(problem.setting, problem.expected, incremental_operation=AlterConfigOpType.SET)
                   for problem in topic_problems]
        resources.append(ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=entries))
    lines = []
    futures = admin.incremental_alter_configs(resources, request_timeout=timeout_s)
    for resource, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            raise EchoseenError(f"changing the settings of topic {resource.name!r} failed: {exc.args[0]}") from exc
        for problem in by_topic[resource.name]:
            lines.append(f"altered  {problem.topic}: {problem.setting} {problem.actual} -> {problem.expected}")
    return lines


def create_missing(config: Config, admin: AdminClient, timeout_s: float) -> list[str]:
    try:
        lines = create_topics(config, admin, timeout_s=max(timeout_s, 10.0))
    except KafkaException as exc:
        raise EchoseenError(f"creating topics on {config.kafka.bootstrap_servers} failed: {exc.args[0]}; check "
                            "[kafka] replication_factor and the credentials' permissions") from exc
    created = [line.split()[1] for line in lines if line.startswith("created")]
    _wait_for_leaders(config, admin, created, timeout_s)
    return [line for line in lines if line.startswith("created")]


def _wait_for_leaders(config: Config, admin: AdminClient, topics: list[str], timeout_s: float) -> None:
    # CreateTopics returns when the controller accepted the topics; a config read
    # right after can still miss them until every partition has a leader.
    deadline = time.monotonic() + max(timeout_s, 10.0)
    for topic in topics:
        while time.monotonic() < deadline:
            described = admin.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if (described is not None and described.error is None and described.partitions
                    and all(partition.leader >= 0 for partition in described.partitions.values())):
                break
            time.sleep(0.1)


def render(states: list[TopicState]) -> str:
    rows = []
    for state in states:
        if not state.exists:
            rows.append((state.name, "missing", "", "", "", "", state.purpose))
            continue
        rows.append((state.name, state.partitions, *(state.configs.get(key, "-") for key in SHOWN_CONFIGS),
                     state.purpose))
    return render_table(("TOPIC", "PARTITIONS", *(key.upper() for key in SHOWN_CONFIGS), "PURPOSE"), rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--create", action="store_true",
                        help="create missing topics with the settings of [kafka]")
    parser.add_argument("--fix", action="store_true",
                        help="set topic configs that differ from the expected ones (never partition counts)")
    add_json_argument(parser)
    add_timeout_argument(parser)


def run(args: argparse.Namespace, config: Config) -> int:
    admin = kafkaops.connect_admin(config, args.timeout_s)
    problems = check_topics(config, admin, args.timeout_s)
    actions: list[str] = []

    if args.create and any(problem.fix == "create" for problem in problems):
        actions += create_missing(config, admin, args.timeout_s)
        problems = check_topics(config, admin, args.timeout_s)
    if args.fix:
        actions += fix_settings(config, admin, problems, args.timeout_s)
        if actions:
            problems = check_topics(config, admin, args.timeout_s)

    states = read_topic_states(config, admin, args.timeout_s)
    if args.json:
        print_json({
            "topics": [state.__dict__ for state in states],
            "actions": actions,
            "problems": [problem.__dict__ for problem in problems],
            "ok": not problems,
        })
        return EXIT_FAILED if problems else EXIT_OK

    for line in actions:
        print(line)
    print(render(states))
    if not problems:
        print("all topics are as expected")
        return EXIT_OK
    print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}:")
    for problem in problems:
        print(f"  - {problem.message}")
    return EXIT_FAILED
