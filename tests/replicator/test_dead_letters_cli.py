"""`echoseen dead-letters list` and `redrive`: printed records, the plan, and no record re-driven twice."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import pytest
from helpers import ECHOSEEN
from replicator_harness import (end_offsets, echo_key, kask_config, missing_or_wrong, raw_event, read_records,
                                running, seen_time, upsert, wait_until)

from echoseen import config as config_module
from replicator import dead_letters
from replicator.kask_client import encode_key

pytestmark = pytest.mark.stack


def echoseen(config_path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([ECHOSEEN, "dead-letters", *args, "-c", str(config_path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def redriven_records(config) -> list:
    return [message for message in read_records(config, config.kafka.topic)
            if dead_letters.HEADER_REDRIVEN_FROM in dead_letters.headers_dict(message)]


def test_list_and_redrive(rep_config, producer, fault_proxy, kask_server, tmp_path, unique_wiki):
    # One record parked because Kask rejected its key (it applies once the fault is gone), one that
    # can never apply (a key with '/'), and one that is not JSON.
    config = kask_config(rep_config, fault_proxy.url(kask_server.settings.base_uri))
    config = replace(config, replicator=replace(config.replicator, dead_letter_after_s=1.0))
    fixable = echo_key(unique_wiki, 1)
    slash_key = f"{unique_wiki}:echo:seen:alert:time:2/3"
    config_path = tmp_path / "config.toml"
    config_path.write_text(config_module.to_toml(config))

    fault_proxy.set_faults(fail_paths=(encode_key(fixable),), error_status=400)
    producer.send(upsert(fixable, seen_time(5)), partition=0)
    producer.send_raw(slash_key.encode(), raw_event(slash_key), partition=0)
    producer.send_raw(b"not-json", b"\x00\x01", partition=1)
    producer.flush()
    with running(config) as instance:
        instance.wait_for_total(3)
        fault_proxy.clear_faults()

        listed = json.loads(echoseen(config_path, "list", "--json").stdout)
        by_reason = {entry["reason"]: entry for entry in listed}
        assert sorted(by_reason) == ["invalid_json", "kask_rejected", "unaddressable_key"]
        rejected = by_reason["kask_rejected"]
        assert rejected["key"] == fixable.decode()
        assert rejected["source"]["topic"] == config.kafka.topic
        assert rejected["source"]["partition"] == 0
        assert rejected["source"]["offset"] == 0
        assert rejected["source"]["timestamp_ms"] > 0
        assert "400" in rejected["detail"]
        assert by_reason["unaddressable_key"]["key"] == slash_key
        assert by_reason["invalid_json"]["value_base64"] == "AAE="
        assert not any(entry["redriven"] for entry in listed)
        text = echoseen(config_path, "list", "--limit", "2").stdout
        assert text.count(" pending  reason=") == 2
        assert f"reason={listed[0]['reason']}" in text
        assert f"reason={listed[2]['reason']}" not in text

        # Without --execute: the plan only.
        before = end_offsets(config)
        plan = echoseen(config_path, "redrive").stdout
        assert "re-drive 3 records" in plan
        assert "reason kask_rejected: 1" in plan
        assert "nothing changed" in plan
        assert end_offsets(config) == before

        echoseen(config_path, "redrive", "--execute")
        assert len(redriven_records(config)) == 3
        wait_until(lambda: missing_or_wrong(config, {fixable: seen_time(5)}) == {}, 30, "the fixed record in Kask")
        # The two that can never apply come back to the dead-letter topic.
        wait_until(lambda: len(read_records(config, config.kafka.dead_letter_topic)) == 5, 30,
                   "the unfixable records parked again")

        # A second redrive plans only the two records parked since the first one.
        plan = echoseen(config_path, "redrive").stdout
        assert "re-drive 2 records" in plan
        listed = json.loads(echoseen(config_path, "list", "--json").stdout)
        assert [entry["redriven"] for entry in listed] == [True, True, True, False, False]
        redriven = redriven_records(config)
        assert sorted(message.key() for message in redriven) == sorted([fixable, slash_key.encode(), b"not-json"])
