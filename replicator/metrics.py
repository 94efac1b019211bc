"""Prometheus metrics of the replicator, in a registry of its own so several instances can share a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from echoseen.health import register_build_info
from replicator.apply import Outcome

PREFIX = "echoseen_replicator_"

KASK_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# From sub-second live traffic to records that waited through a long outage.
END_TO_END_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
                        86400.0)


class ReplicatorMetrics:
    """Every metric the replicator exports; label values of per-partition gauges are topic and partition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        register_build_info(self.registry, "replicator")
        registry = self.registry

        self.records = Counter(PREFIX + "records", "Records processed, by outcome.", ["outcome"], registry=registry)
        for outcome in Outcome:
            self.records.labels(outcome=outcome.value)
        self.dead_lettered = Counter(PREFIX + "dead_lettered_records",
                                     "Records parked in the dead-letter topic, by reason.", ["reason"],
                                     registry=registry)
        self.kask_request_seconds = Histogram(
            PREFIX + "kask_request_duration_seconds",
            "Kask request latency by method and status (HTTP status, timeout or connection_error).",
            ["method", "status"], buckets=KASK_LATENCY_BUCKETS_S, registry=registry)
        self.kask_in_flight = Gauge(PREFIX + "kask_in_flight_requests", "Kask requests waiting for a response.",
                                    registry=registry)
        self.retries = Counter(PREFIX + "retries", "Retried attempts of a record, by the failure that caused them "
                               "(timeout, connection_error, http_5xx, dead_letter_produce).", ["reason"],
                               registry=registry)
        self.unanswered_write_holds = Counter(
            PREFIX + "unanswered_write_holds", "Records that waited after one of their Kask writes got no response, "
            "so that write cannot land after a newer one of the same key.", registry=registry)
        self.rebalances = Counter(PREFIX + "rebalances", "Consumer group rebalance callbacks, by kind "
                                  "(assigned, revoked, lost).", ["kind"], registry=registry)
        self.paused_partitions = Gauge(PREFIX + "paused_partitions",
                                       "Assigned partitions whose consumption is paused (retry, full buffer or "
                                       "stopped).", registry=registry)
        self.stopped_partitions = Gauge(PREFIX + "stopped_partitions",
                                        "Partitions stopped until an operator acts (newer schema version, "
                                        "committed offset out of retention).", registry=registry)
        self.partition_stopped = Gauge(PREFIX + "partition_stopped", "1 for each stopped partition, with the reason.",
                                       ["topic", "partition", "reason"], registry=registry)
        self.buffered_records = Gauge(PREFIX + "buffered_records", "Records consumed but not yet finished.",
                                      registry=registry)
        self.lag_records = Gauge(PREFIX + "consumer_lag_records",
                                 "Records between the first unfinished offset and the end of the partition.",
                                 ["topic", "partition"], registry=registry)
        self.lag_seconds = Gauge(PREFIX + "consumer_lag_seconds",
                                 "Age of the oldest consumed record not yet applied (Kafka timestamp); 0 when "
                                 "caught up.", ["topic", "partition"], registry=registry)
        self.end_to_end_seconds = Histogram(
            PREFIX + "end_to_end_delay_seconds",
            "Delay from the Redis read (event version_us) to Kask confirming the write or delete.",
            buckets=END_TO_END_BUCKETS_S, registry=registry)
        self.commits = Counter(PREFIX + "offset_commits", "Offset commits, by result (ok, failed).", ["result"],
                               registry=registry)
        self.last_tick = Gauge(PREFIX + "main_loop_last_tick_timestamp_seconds",
                               "Unix time of the last main loop iteration.", registry=registry)

    def observe_kask_request(self, method: str, status: str, duration_s: float) -> None:
        self.kask_request_seconds.labels(method=method, status=status).observe(duration_s)

    def remove_partition(self, topic: str, partition: int) -> None:
        """Drop the per-partition series of a partition this instance no longer owns."""
        for gauge in (self.lag_records, self.lag_seconds):
            try:
                gauge.remove(topic, str(partition))
            except KeyError:
                pass
