"""`echoseen status` on a real Kafka, from capture and verify documents written into the state topic."""

from __future__ import annotations

import re
import time

import pytest

from capture import state as state_store
from echoseen.errors import EXIT_FAILED, EXIT_OK

pytestmark = pytest.mark.stack

SOURCE = "10.0.0.7:6379/0"


def capture_document(source: str, updated_wall_ms: int, open_gaps: list[dict], recent_gaps: list[dict],
                     stopped: bool = False) -> dict:
    return {
        "kind": "capture", "source": source, "instance": "inst0001", "host": "mw-redis-7", "pid": 4242,
        "run_id": "0123abcd", "watermark_us": (updated_wall_ms - 1500) * 1000, "updated_wall_ms": updated_wall_ms,
        "open_gaps": open_gaps, "recent_gaps": recent_gaps, "stopped": stopped, "counters": {"published": 981},
    }


def gap(gap_id: str, start_ms: int, reasons: list[str], closed_at_ms: int | None = None, **scan) -> dict:
    return {"start_us": start_ms * 1000, "end_us": (start_ms + 2000) * 1000, "reasons": reasons, "id": gap_id,
            "cursor": scan.get("cursor", 0), "scan_started": scan.get("scan_started", False),
            "scanned_keys": scan.get("scanned_keys", 0), "published_keys": scan.get("published_keys", 0),
            "run_id": "0123abcd", "closed_at_us": None if closed_at_ms is None else closed_at_ms * 1000,
            "needs_rescan": False}


def write_state(ops, key: str, document: dict) -> None:
    ops.produce([(key.encode(), state_store.encode(document), None)], topic=ops.config.kafka.state_topic)


def test_status_heartbeat_gaps_dead_letters_verify(kafka_ops):
    now_ms = int(time.time() * 1000)
    open_gap = gap("gapopen01", now_ms - 1_200_000, ["subscriber_reconnect"], cursor=1536, scan_started=True,
                   scanned_keys=7000, published_keys=12)
    closed_gap = gap("gapdone01", now_ms - 7_200_000, ["capture_restart"], closed_at_ms=now_ms - 7_000_000,
                     scan_started=True, scanned_keys=90000, published_keys=40)
    write_state(kafka_ops, state_store.CAPTURE_PREFIX + SOURCE,
                capture_document(SOURCE, now_ms - 1000, [open_gap], [closed_gap]))
    write_state(kafka_ops, state_store.VERIFY_KEY, {
        "kind": "verify", "finished_wall_ms": now_ms - 60_000, "passed": False, "bad": 2,
        "categories": {"equal": 98, "missing_in_kask": 2}, "scope": "all watched keys"})
    kafka_ops.produce([(b"k1", b"dead", None), (b"k2", b"dead", None)], topic=kafka_ops.config.kafka.dead_letter_topic)

    result = kafka_ops.cli("status", "--json")

    assert result.status == EXIT_FAILED, result.stderr
    document = result.json()
    capture = document["captures"][0]
    assert capture["source"] == SOURCE
    assert capture["heartbeat_age_s"] < 30
    assert 1.0 <= capture["watermark_age_s"] < 60
    assert capture["open_gaps"][0]["id"] == "gapopen01"
    assert capture["recent_gaps"][0]["id"] == "gapdone01"
    assert document["dead_letters"] == {"topic": kafka_ops.config.kafka.dead_letter_topic, "records": 2}
    assert document["verify"]["categories"] == {"equal": 98, "missing_in_kask": 2}
    assert document["replicator"]["total_lag_records"] == 0
    attention = "\n".join(document["attention"])
    assert "gap gapopen01 (subscriber_reconnect) has been open for 20m" in attention
    assert "catch-up scan at cursor 1536, 7000 keys scanned, 12 published" in attention
    assert "2 records in dead-letter topic" in attention
    assert "heartbeat" not in attention
    assert len(document["attention"]) == 2

    relaxed = kafka_ops.cli("status", "--max-gap-age", "3600", "--max-dead-letters", "2")
    assert relaxed.status == EXIT_OK, relaxed.stdout
    assert "all good" in relaxed.stdout
    assert "gapopen01  open" in relaxed.stdout
    assert "subscriber_reconnect" in relaxed.stdout
    assert "dead letters: 2 records" in relaxed.stdout
    assert "FAILED at" in relaxed.stdout
    assert "missing_in_kask=2" in relaxed.stdout


def test_status_stale_heartbeat(kafka_ops):
    now_ms = int(time.time() * 1000)
    write_state(kafka_ops, state_store.CAPTURE_PREFIX + SOURCE,
                capture_document(SOURCE, now_ms - 300_000, [], [], stopped=True))

    result = kafka_ops.cli("status", "--max-heartbeat-age", "60")
    tolerant = kafka_ops.cli("status", "--max-heartbeat-age", "600")

    assert result.status == EXIT_FAILED
    assert re.search(rf"capture of {re.escape(SOURCE)}: stopped cleanly 5m0[0-9]s ago", result.stdout)
    assert "over --max-heartbeat-age 60 s" in result.stdout
    assert "stopped" in result.stdout.splitlines()[4]
    assert tolerant.status == EXIT_OK, tolerant.stdout


def test_status_without_capture_state(kafka_ops):
    result = kafka_ops.cli("status", "--json")

    assert result.status == EXIT_FAILED
    assert result.json()["captures"] == []
    assert any("no capture has written its state" in item for item in result.json()["attention"])
    assert result.json()["verify"] is None
