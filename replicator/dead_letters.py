"""List or re-drive the records the replicator parked in the dead-letter topic.

The replicator parks a record that can never be applied in the dead-letter
topic: invalid JSON, a schema violation, a bad value, a key Kask cannot
address, a 4xx from Kask, or a 5xx for that one record that outlasted
replicator.dead_letter_after_s. The parked record keeps its original key and
value and gets these headers:

  echoseen.dlq.reason               why it was parked
  echoseen.dlq.detail               the error, with the key and Kask's response
  echoseen.dlq.source.topic         topic, partition and offset of the original record
  echoseen.dlq.source.partition
  echoseen.dlq.source.offset
  echoseen.dlq.source.timestamp_ms  the original record's timestamp (milliseconds since the epoch)
  echoseen.dlq.group_id             the replicator's consumer group
  echoseen.dlq.parked_at_ms         when it was parked

`list` prints the parked records. `redrive` re-produces them, key and value
unchanged, into the event topic so the replicator applies them again, for
example after a replicator upgrade or a Kask fix. It prints its plan and
changes nothing without --execute. Re-driven records are remembered with the
offsets of the consumer group <replicator.group_id>.dlq-redrive on the
dead-letter topic, committed in the same Kafka transaction as the re-produced
records, so no record is re-driven twice across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import socket
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from echoseen import kafka as kafka_module
from echoseen.config import Config
from echoseen.errors import EXIT_FAILED, EXIT_OK, ServiceUnavailable
from echoseen.events import key_text

log = logging.getLogger(__name__)

HEADER_PREFIX = "echoseen.dlq."
HEADER_REASON = HEADER_PREFIX + "reason"
HEADER_DETAIL = HEADER_PREFIX + "detail"
HEADER_SOURCE_TOPIC = HEADER_PREFIX + "source.topic"
HEADER_SOURCE_PARTITION = HEADER_PREFIX + "source.partition"
HEADER_SOURCE_OFFSET = HEADER_PREFIX + "source.offset"
HEADER_SOURCE_TIMESTAMP_MS = HEADER_PREFIX + "source.timestamp_ms"
HEADER_GROUP_ID = HEADER_PREFIX + "group_id"
HEADER_PARKED_AT_MS = HEADER_PREFIX + "parked_at_ms"
# Added to a re-driven record in the event topic: where in the dead-letter topic it came from.
HEADER_REDRIVEN_FROM = "echoseen.redriven_from"

MAX_DETAIL_BYTES = 2000
REDRIVE_GROUP_SUFFIX = ".dlq-redrive"
# Records re-produced per Kafka transaction; each transaction also commits the redrive group's offsets.
REDRIVE_TRANSACTION_RECORDS = 5000
KAFKA_TIMEOUT_S = 30.0


class DeadLetterError(Exception):
    """The dead-letter topic did not acknowledge a record; the record stays unfinished and is retried."""


def dead_letter_headers(record: Message, reason: str, detail: str, group_id: str,
                        parked_at_ms: int) -> list[tuple[str, bytes]]:
    """Build the headers of a dead-letter record: the original headers, then the replicator's own."""
    headers = [(name, value) for name, value in (record.headers() or []) if not name.startswith(HEADER_PREFIX)]
    timestamp_type, timestamp_ms = record.timestamp()
    detail_bytes = detail.encode("utf-8")[:MAX_DETAIL_BYTES]
    headers += [
        (HEADER_REASON, reason.encode("utf-8")),
        (HEADER_DETAIL, detail_bytes.decode("utf-8", errors="ignore").encode("utf-8")),
        (HEADER_SOURCE_TOPIC, record.topic().encode("utf-8")),
        (HEADER_SOURCE_PARTITION, str(record.partition()).encode("ascii")),
        (HEADER_SOURCE_OFFSET, str(record.offset()).encode("ascii")),
        (HEADER_SOURCE_TIMESTAMP_MS, str(timestamp_ms if timestamp_ms is not None and timestamp_ms >= 0 else -1)
         .encode("ascii")),
        (HEADER_GROUP_ID, group_id.encode("utf-8")),
        (HEADER_PARKED_AT_MS, str(parked_at_ms).encode("ascii")),
    ]
    return headers


def headers_dict(record: Message) -> dict[str, str]:
    """Return a record's headers as text; a repeated name keeps its last value."""
    result = {}
    for name, value in record.headers() or []:
        result[name] = "" if value is None else value.decode("utf-8", errors="backslashreplace")
    return result


class DeadLetterProducer:
    """Produce dead-letter records and let coroutines await their acknowledgement."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.topic = config.kafka.dead_letter_topic
        self.group_id = config.replicator.group_id
        self._loop = loop
        settings = kafka_module.producer_settings(config, **{
            "linger.ms": 5,
            "client.id": f"echoseen-replicator-dlq-{socket.gethostname()}",
        })
        self._producer = Producer(settings)
        self._stopping = threading.Event()
        # Delivery callbacks run inside poll(), so a thread polls while the daemon runs.
        self._poller = threading.Thread(target=self._poll, name="dead-letter-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.1)

    async def send(self, record: Message, reason: str, detail: str) -> None:
        """Produce one record and wait until the broker acknowledged it (acks=all); raise DeadLetterError if not."""
        future: asyncio.Future[None] = self._loop.create_future()

        def delivered(error: KafkaError | None, _message: Message) -> None:
            self._loop.call_soon_threadsafe(_resolve, future, error)

        headers = dead_letter_headers(record, reason, detail, self.group_id, int(time.time() * 1000))
        try:
            self._producer.produce(self.topic, key=record.key(), value=record.value(), headers=headers,
                                   on_delivery=delivered)
        except (BufferError, KafkaException) as exc:
            raise DeadLetterError(f"cannot queue a record for the dead-letter topic {self.topic!r}: {exc}") from exc
        await future

    def close(self, timeout_s: float = 10.0) -> int:
        """Flush and stop; return the number of records still not acknowledged."""
        self._stopping.set()
        self._poller.join(timeout=2.0)
        return self._producer.flush(timeout_s)


def _resolve(future: asyncio.Future[None], error: KafkaError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(DeadLetterError(f"the dead-letter topic did not acknowledge a record: {error.str()}"))


# ---------------------------------------------------------------------------
# The `echoseen dead-letters` command
# ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    list_parser = actions.add_parser("list", help="print the parked records with their headers")
    list_parser.add_argument("--limit", type=int, default=100, metavar="N",
                             help="print at most N records, oldest first (default 100; 0 for all)")
    list_parser.add_argument("--json", action="store_true", help="print a JSON array instead of text")
    redrive_parser = actions.add_parser("redrive", help="re-produce parked records into the event topic")
    redrive_parser.add_argument("--execute", action="store_true",
                                help="re-produce the records; without it only the plan is printed")
    redrive_parser.add_argument("--limit", type=int, default=0, metavar="N",
                                help="re-drive at most N records, oldest first (default 0: all)")
    for action_parser in (list_parser, redrive_parser):
        # The common options are accepted after the action too; SUPPRESS keeps a value given before it.
        action_parser.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
                                   help="TOML configuration file, as for every echoseen command")
        action_parser.add_argument("--log-level", default=argparse.SUPPRESS,
                                   help="override [logging] level: DEBUG, INFO, WARNING or ERROR")


def run(args: argparse.Namespace, config: Config) -> int:
    if args.limit < 0:
        print(f"--limit must not be negative, got {args.limit}")
        return EXIT_FAILED
    if args.action == "list":
        return list_dead_letters(config, limit=args.limit, as_json=args.json)
    return redrive(config, execute=args.execute, limit=args.limit)


def redrive_group_id(config: Config) -> str:
    return config.replicator.group_id + REDRIVE_GROUP_SUFFIX


@dataclass(frozen=True)
class PartitionRange:
    """Offsets of one dead-letter partition to read: from ``start`` up to, not including, ``end``."""

    partition: int
    start: int
    end: int


def _consumer(config: Config, group_id: str) -> Consumer:
    settings = kafka_module.client_settings(config)
    settings.update({
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "isolation.level": "read_committed",
    })
    return Consumer(settings)


def _ranges(consumer: Consumer, config: Config, from_committed: bool) -> list[PartitionRange]:
    topic = config.kafka.dead_letter_topic
    try:
        metadata = consumer.list_topics(topic, timeout=KAFKA_TIMEOUT_S)
    except KafkaException as exc:
        raise ServiceUnavailable(f"cannot reach Kafka at {config.kafka.bootstrap_servers}: {exc}") from exc
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        raise ServiceUnavailable(f"dead-letter topic {topic!r} does not exist; create it with "
                                 "`echoseen topics --create`")
    partitions = sorted(described.partitions)
    committed = {}
    if from_committed:
        for entry in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=KAFKA_TIMEOUT_S):
            committed[entry.partition] = entry.offset
    ranges = []
    for partition in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=KAFKA_TIMEOUT_S)
        start = max(low, committed.get(partition, -1))
        ranges.append(PartitionRange(partition, start, high))
    return ranges


def _read(consumer: Consumer, topic: str, ranges: list[PartitionRange], limit: int) -> Iterator[Message]:
    """Yield the records of the given ranges, partition after partition, at most ``limit`` (0: all)."""
    produced = 0
    for part in ranges:
        if part.start >= part.end:
            continue
        consumer.assign([TopicPartition(topic, part.partition, part.start)])
        position = part.start
        idle_deadline = time.monotonic() + KAFKA_TIMEOUT_S
        while position < part.end:
            message = consumer.poll(1.0)
            if message is None:
                # Transaction markers take offsets too, so the end can lie past the last record.
                if time.monotonic() > idle_deadline:
                    break
                continue
            if message.error():
                raise ServiceUnavailable(f"reading the dead-letter topic {topic!r} failed: {message.error().str()}")
            idle_deadline = time.monotonic() + KAFKA_TIMEOUT_S
            position = message.offset() + 1
            if message.offset() >= part.end:
                break
            yield message
            produced += 1
            if limit and produced >= limit:
                return
        consumer.unassign()


def _describe(message: Message, redriven: bool | None) -> dict[str, object]:
    headers = headers_dict(message)
    value = message.value()
    return {
        "dlq_partition": message.partition(),
        "dlq_offset": message.offset(),
        "key": None if message.key() is None else key_text(message.key()),
        "value_base64": None if value is None else base64.b64encode(value).decode("ascii"),
        "value_text": None if value is None else value.decode("utf-8", errors="backslashreplace")[:500],
        "reason": headers.get(HEADER_REASON),
        "detail": headers.get(HEADER_DETAIL),
        "source": {
            "topic": headers.get(HEADER_SOURCE_TOPIC),
            "partition": _int_or_none(headers.get(HEADER_SOURCE_PARTITION)),
            "offset": _int_or_none(headers.get(HEADER_SOURCE_OFFSET)),
            "timestamp_ms": _int_or_none(headers.get(HEADER_SOURCE_TIMESTAMP_MS)),
        },
        "headers": headers,
        "redriven": redriven,
    }


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def list_dead_letters(config: Config, limit: int, as_json: bool) -> int:
    """Print the parked records; each is marked as re-driven when the redrive group's offset passed it."""
    topic = config.kafka.dead_letter_topic
    consumer = _consumer(config, redrive_group_id(config))
    try:
        ranges = _ranges(consumer, config, from_committed=False)
        redriven_up_to = {part.partition: part.start for part in _ranges(consumer, config, from_committed=True)}
        entries = [_describe(message, message.offset() < redriven_up_to.get(message.partition(), 0))
                   for message in _read(consumer, topic, ranges, limit)]
    finally:
        consumer.close()

    total = sum(max(0, part.end - part.start) for part in ranges)
    if as_json:
        print(json.dumps(entries, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"# dead-letter topic {topic}: about {total} records (offsets incl. transaction markers), "
          f"showing {len(entries)}")
    for entry in entries:
        source = entry["source"]
        state = "re-driven" if entry["redriven"] else "pending"
        print(f"{entry['dlq_partition']}:{entry['dlq_offset']}  {state}  reason={entry['reason']}  "
              f"source={source['topic']}:{source['partition']}@{source['offset']}  key={entry['key']!r}")
        print(f"    detail: {entry['detail']}")
        other = {name: value for name, value in entry["headers"].items() if not name.startswith(HEADER_PREFIX)}
        if other:
            print(f"    other headers: {json.dumps(other, ensure_ascii=False)}")
    return EXIT_OK


def redrive(config: Config, execute: bool, limit: int) -> int:
    """Print the redrive plan and, with ``execute``, re-produce the pending records in Kafka transactions."""
    dlq_topic = config.kafka.dead_letter_topic
    group_id = redrive_group_id(config)
    consumer = _consumer(config, group_id)
    try:
        ranges = _ranges(consumer, config, from_committed=True)
        pending = list(_read(consumer, dlq_topic, ranges, limit))

        reasons = Tally(headers_dict(message).get(HEADER_REASON, "(none)") for message in pending)
        print(f"# plan: re-drive {len(pending)} records from {dlq_topic} into {config.kafka.topic} "
              f"(redrive group {group_id})")
        for part in ranges:
            print(f"#   partition {part.partition}: offsets {part.start} to {part.end - 1}"
                  if part.end > part.start else f"#   partition {part.partition}: nothing pending")
        for reason, count in sorted(reasons.items()):
            print(f"#   reason {reason}: {count}")
        if not pending:
            print("# nothing to re-drive")
            return EXIT_OK
        if not execute:
            print("# dry run: nothing changed; rerun with --execute to re-produce these records")
            return EXIT_OK

        done = _produce_in_transactions(config, consumer, pending)
    finally:
        consumer.close()
    print(f"# re-drove {done} records into {config.kafka.topic}")
    return EXIT_OK


def _produce_in_transactions(config: Config, consumer: Consumer, pending: list[Message]) -> int:
    settings = kafka_module.producer_settings(config, **{
        # One fixed id per redrive group: a second redrive running at the same time fences this one.
        "transactional.id": f"echoseen-redrive-{redrive_group_id(config)}",
        # librdkafka requires the delivery timeout to fit in the transaction timeout.
        "transaction.timeout.ms": kafka_module.DELIVERY_TIMEOUT_MS,
        "linger.ms": 5,
    })
    producer = None
    done = 0
    try:
        producer = Producer(settings)
        producer.init_transactions(KAFKA_TIMEOUT_S)
        for start in range(0, len(pending), REDRIVE_TRANSACTION_RECORDS):
            chunk = pending[start:start + REDRIVE_TRANSACTION_RECORDS]
            producer.begin_transaction()
            next_offsets: dict[int, int] = {}
            for message in chunk:
                headers = [(name, value) for name, value in (message.headers() or [])
                           if not name.startswith(HEADER_PREFIX)]
                headers.append((HEADER_REDRIVEN_FROM,
                                f"{message.topic()}:{message.partition()}:{message.offset()}".encode("utf-8")))
                producer.produce(config.kafka.topic, key=message.key(), value=message.value(), headers=headers)
                next_offsets[message.partition()] = message.offset() + 1
                producer.poll(0)

            # The redrive group's offsets move in the same transaction as the records, so a record is
            # either re-driven and remembered, or neither.
            offsets = [TopicPartition(config.kafka.dead_letter_topic, partition, offset)
                       for partition, offset in sorted(next_offsets.items())]
            producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), KAFKA_TIMEOUT_S)
            producer.commit_transaction(KAFKA_TIMEOUT_S)
            done += len(chunk)
            log.info("re-drove %d of %d records", done, len(pending))
        return done
    except KafkaException as exc:
        if producer is not None:
            try:
                producer.abort_transaction(KAFKA_TIMEOUT_S)
            except KafkaException:
                pass
        raise ServiceUnavailable(f"re-driving into {config.kafka.topic!r} failed after {done} records; the records "
                                 f"of the failed transaction were not committed and stay pending: "
                                 f"{exc.args[0]}") from exc
