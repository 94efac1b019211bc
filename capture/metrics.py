"""Prometheus metrics of the capture daemon, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from echoseen.health import register_build_info


class CaptureMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        register_build_info(self.registry, "capture")
        registry = self.registry
        self.notifications = Counter(
            "echoseen_capture_notifications_total", "Keyspace notifications received for watched keys, by event.",
            ["source", "event"], registry=registry)
        self.ignored_notifications = Counter(
            "echoseen_capture_ignored_notifications_total",
            "Notifications dropped here: keys that match no pattern, or channels of another database.",
            ["source", "reason"], registry=registry)
        self.coalesced = Counter(
            "echoseen_capture_coalesced_total", "Notifications for a key that was already waiting to be read.",
            ["source"], registry=registry)
        self.pending_keys = Gauge(
            "echoseen_capture_pending_keys", "Distinct keys waiting to be read.", ["source"], registry=registry)
        self.events_published = Counter(
            "echoseen_capture_events_published_total", "Events acknowledged by Kafka, by origin.",
            ["origin"], registry=registry)
        self.bad_values = Counter(
            "echoseen_capture_bad_values_total", "Watched keys holding a value that is not published, by reason.",
            ["source", "reason"], registry=registry)
        self.gaps = Counter(
            "echoseen_capture_gaps_total", "Gaps recorded, by reason.", ["source", "reason"], registry=registry)
        self.gap_duration = Histogram(
            "echoseen_capture_gap_duration_seconds", "Length of recorded gap windows (Redis clock).",
            ["source"], buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600, 21600, 86400), registry=registry)
        self.open_gaps = Gauge(
            "echoseen_capture_open_gaps", "Gaps whose catch-up scan has not finished.", ["source"],
            registry=registry)
        self.oldest_open_gap_age = Gauge(
            "echoseen_capture_oldest_open_gap_age_seconds",
            "Age of the oldest open gap's start; 0 when none is open.", ["source"], registry=registry)
        self.catchup_scanned = Counter(
            "echoseen_capture_catchup_keys_scanned_total", "Keys read by catch-up scans.", ["source"],
            registry=registry)
        self.catchup_published = Counter(
            "echoseen_capture_catchup_keys_published_total", "Keys a catch-up scan published.", ["source"],
            registry=registry)
        self.produce_errors = Counter(
            "echoseen_capture_produce_errors_total", "Records Kafka did not take: queue full or delivery failed.",
            ["kind"], registry=registry)
        self.read_errors = Counter(
            "echoseen_capture_read_errors_total", "Failed batch reads from Redis.", ["source"], registry=registry)
        self.reconnects = Counter(
            "echoseen_capture_subscription_reconnects_total", "Pub/sub connections re-established.", ["source"],
            registry=registry)
        self.heartbeat_age = Gauge(
            "echoseen_capture_heartbeat_age_seconds",
            "Seconds since the subscription last delivered the capture's own heartbeat.", ["source"],
            registry=registry)
        self.watermark_age = Gauge(
            "echoseen_capture_watermark_age_seconds",
            "Seconds between now and the time up to which every change is known to be in Kafka.", ["source"],
            registry=registry)
        self.read_to_ack = Histogram(
            "echoseen_capture_read_to_ack_seconds",
            "Delay from the Redis read of a key to Kafka's acknowledgement of its event.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=registry)
