"""Parts of the backfill that need no running service: plans, checkpoints, cursors, progress, rendering."""

from __future__ import annotations

import io
import json
import logging
import os
from datetime import datetime, timezone

import pytest
from backfill_helpers import parse_args

from capture import backfill, backfill_checkpoint
from capture.backfill_checkpoint import Checkpoint, ServerCheckpoint
from capture.backfill_plan import build_plan, parse_cutoff, wiki_patterns
from capture.backfill_progress import Progress, format_duration, latency_stats
from capture.backfill_report import AgeReport, bucket_bounds, render_report, render_summary, wiki_and_type
from capture.backfill_scan import Chunk, scan_fraction, select_keys, split_evenly
from capture.reader import KeyState
from echoseen import config as config_module
from echoseen.errors import ConfigError


@pytest.fixture
def config():
    return config_module.load(None, environ={})


def test_cutoff_date_is_utc_midnight():
    assert parse_cutoff("2024-03-01", "--cutoff") == datetime(2024, 3, 1, tzinfo=timezone.utc)


def test_cutoff_datetime_without_zone_is_utc():
    assert parse_cutoff("2024-03-01T12:30:00", "--cutoff") == datetime(2024, 3, 1, 12, 30, tzinfo=timezone.utc)


def test_cutoff_zone_converted_to_utc():
    assert parse_cutoff("2024-03-01T12:30:00+02:00", "x") == datetime(2024, 3, 1, 10, 30, tzinfo=timezone.utc)
    assert parse_cutoff("2024-03-01T12:30:00Z", "x") == datetime(2024, 3, 1, 12, 30, tzinfo=timezone.utc)


def test_cutoff_empty_means_none():
    assert parse_cutoff("", "[backfill] cutoff") is None
    assert parse_cutoff("  ", "[backfill] cutoff") is None


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "2024-02-30", "1969-12-31"])
def test_cutoff_invalid_names_source(text):
    with pytest.raises(ConfigError) as failure:
        parse_cutoff(text, "[backfill] cutoff")
    assert "[backfill] cutoff" in str(failure.value)
    assert repr(text) in str(failure.value)


def test_plan_option_overrides_config_cutoff(config):
    from dataclasses import replace

    config = replace(config, backfill=replace(config.backfill, cutoff="2020-01-01"))
    assert build_plan(config, None, None, None).cutoff_ts_mw == "20200101000000"
    assert build_plan(config, None, None, "2021-05-06T07:08:09Z").cutoff_ts_mw == "20210506070809"


def test_plan_without_selection_uses_key_patterns(config):
    plan = build_plan(config, None, None, None)
    assert plan.match == "*:echo:seen:*:time:*"
    assert plan.cutoff_ts_mw == ""
    assert len(plan.filters) == 1


def test_plan_wiki_narrows_match(config):
    plan = build_plan(config, ["enwiki"], None, None)
    assert plan.match == "enwiki:echo:seen:*:time:*"
    keys = [b"enwiki:echo:seen:alert:time:1", b"dewiki:echo:seen:alert:time:1", b"enwiki:other:2",
            b"enwiki:echo:seen:message:time:3"]
    assert select_keys(keys, plan.filters) == [b"enwiki:echo:seen:alert:time:1", b"enwiki:echo:seen:message:time:3"]


def test_plan_pattern_never_widens(config):
    plan = build_plan(config, None, ["*"], None)
    assert select_keys([b"enwiki:session:1", b"enwiki:echo:seen:alert:time:1"], plan.filters) == [
        b"enwiki:echo:seen:alert:time:1"]


@pytest.mark.parametrize("wiki", ["en*", "en wiki", "", "a:b"])
def test_wiki_invalid_rejected(wiki):
    with pytest.raises(ConfigError):
        wiki_patterns(wiki)


def test_checkpoint_settings_cover_selection(config):
    first = build_plan(config, ["enwiki"], None, None).checkpoint_settings(config)
    second = build_plan(config, ["enwiki"], None, "2024-01-01").checkpoint_settings(config)
    differences = backfill_checkpoint.settings_differences(first, second)
    assert len(differences) == 1
    assert differences[0].startswith("cutoff:")


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "nested" / "checkpoint.json"
    checkpoint = Checkpoint(settings={"topic": "t"}, started_at="2026-01-01T00:00:00Z")
    checkpoint.servers["127.0.0.1:6379/0"] = ServerCheckpoint(run_id="abc", cursor=1234, restarts=1,
                                                             counts={"published": 5})
    backfill_checkpoint.save(path, checkpoint)

    loaded = backfill_checkpoint.load(path)
    assert loaded.settings == {"topic": "t"}
    assert loaded.servers["127.0.0.1:6379/0"] == checkpoint.servers["127.0.0.1:6379/0"]
    assert loaded.updated_at
    assert not loaded.finished
    # Only the checkpoint itself is left; the temporary file was renamed over it.
    assert os.listdir(path.parent) == ["checkpoint.json"]


def test_checkpoint_missing_is_none(tmp_path):
    assert backfill_checkpoint.load(tmp_path / "absent.json") is None


@pytest.mark.parametrize("content", ["{not json", "[]", json.dumps({"format_version": 99, "settings": {},
                                                                     "servers": {}})])
def test_checkpoint_invalid_names_fix(tmp_path, content):
    path = tmp_path / "checkpoint.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as failure:
        backfill_checkpoint.load(path)
    assert "--restart" in str(failure.value)
    assert "[backfill] checkpoint_file" in str(failure.value)


def test_checkpoint_finished_needs_every_server():
    checkpoint = Checkpoint(settings={})
    assert not checkpoint.finished
    checkpoint.servers["a"] = ServerCheckpoint(finished=True)
    checkpoint.servers["b"] = ServerCheckpoint(finished=False)
    assert not checkpoint.finished
    checkpoint.servers["b"].finished = True
    assert checkpoint.finished


def test_scan_fraction_follows_reversed_cursor():
    assert scan_fraction(0) == 0.0
    # In a table of 8 buckets, Redis visits 0, 4, 2, 6, 1, 5, 3, 7: each step adds 1/8.
    order = [4, 2, 6, 1, 5, 3, 7]
    assert [scan_fraction(cursor) for cursor in order] == [step / 8 for step in range(1, 8)]


def test_split_evenly_balances_batches():
    keys = [bytes([index]) for index in range(11)]
    assert [len(batch) for batch in split_evenly(keys, 10)] == [6, 5]
    assert split_evenly(keys, 20) == [keys]
    assert sum(split_evenly(keys, 3), []) == keys


def test_latency_stats_nearest_rank():
    stats = latency_stats([0.001 * value for value in range(1, 101)])
    assert stats == {"samples": 100, "p50_ms": 50.0, "p99_ms": 99.0, "max_ms": 100.0}
    assert latency_stats([])["samples"] == 0


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.4) == "1:02:05"


def test_wiki_and_type_requires_echo_shape():
    assert wiki_and_type(b"enwiki:echo:seen:alert:time:12") == ("enwiki", "alert")
    assert wiki_and_type(b"global:echo:seen:message:time:7") == ("global", "message")
    assert wiki_and_type(b"enwiki:echo:seen:alert:time:u12") == ("(other)", "(other)")
    assert wiki_and_type(b"enwiki:echo:seen:alert:time:12:extra") == ("(other)", "(other)")


def test_bucket_bounds_are_inclusive():
    as_of = datetime(2026, 1, 31, 0, 0, 0, tzinfo=timezone.utc)
    report = AgeReport(as_of, "", 1024)
    assert bucket_bounds(as_of)[0] == "20260101000000"

    def state(key: bytes, seen: str, ttl: bool = True) -> KeyState:
        value = b's:14:"' + seen.encode() + b'";'
        return KeyState(key, True, 0, value=value, expire_at_ms=1 if ttl else None, redis_type="string",
                        size=len(value))

    chunk = Chunk(0, "r", [state(b"w:echo:seen:alert:time:1", "20260101000000"),
                           state(b"w:echo:seen:alert:time:2", "20251231235959", ttl=False),
                           state(b"w:echo:seen:alert:time:3", "19700101000001"),
                           state(b"w:echo:seen:alert:time:4", "20100101000000")], 4, 0, True, 1.0)
    report.add(chunk, "s")
    row = report.to_json()["rows"][0]
    assert row["age_buckets"] == {"le_30d": 1, "le_90d": 1, "le_1y": 0, "le_2y": 0, "older": 1}
    assert row["placeholders"] == 1
    assert row["no_ttl"] == 1
    assert row["would_copy"] == 3
    assert row["would_copy_without_ttl"] == 1


def test_progress_logs_when_not_a_terminal(caplog):
    caplog.set_level(logging.INFO)
    stream = io.StringIO()
    progress = Progress(0.0001, "published", stream=stream, tty=False)
    progress.begin("host:1/0", 1000, 0.0)
    progress._started -= 10
    progress._last_output = 0.0
    progress.update(0.5, 500, 400)
    assert "50.0 % of 1000 keys (DBSIZE)" in caplog.text
    assert "400 published" in caplog.text
    assert stream.getvalue() == ""


def test_progress_bar_on_terminal():
    stream = io.StringIO()
    progress = Progress(10.0, "published", stream=stream, tty=True)
    progress.begin("host:1/0", 1000, 0.0)
    progress._started -= 10
    progress._last_output = 0.0
    progress.update(0.25, 250, 200)
    output = stream.getvalue()
    assert output.startswith("\rhost:1/0 [######")
    assert "25.0%" in output
    assert "ETA 0:00:30" in output
    progress.clear()
    assert stream.getvalue().endswith("\r\033[K")


def test_resume_command_repeats_selection():
    args = parse_args("--config", "/etc/echoseen.toml", "--wiki", "enwiki", "--pattern", "x:*", "--cutoff",
                      "2024-01-01", "--json")
    assert backfill.resume_command(args) == ("echoseen backfill --resume --config /etc/echoseen.toml --wiki enwiki "
                                             "--pattern 'x:*' --cutoff 2024-01-01 --json")


@pytest.mark.parametrize("argv, message", [
    (["--resume", "--restart"], "exclude each other"),
    (["--report", "--resume"], "publishes nothing"),
    (["--as-of", "2024-01-01"], "only applies to --report"),
])
def test_option_conflicts_rejected(config, argv, message):
    with pytest.raises(ConfigError) as failure:
        backfill.execute(parse_args(*argv), config)
    assert message in str(failure.value)


def test_render_summary_mentions_resume():
    summary = {
        "status": "interrupted", "duration_s": 3.0, "topic": "t", "resumed": False,
        "this_run": {"scanned": 10, "matched": 9, "published": 8, "copy_s": 2.0, "scanned_per_s": 5,
                     "published_per_s": 4},
        "totals": {"scanned": 10, "matched": 9, "published": 8, "skipped": {"placeholder": 1},
                   "bad_values": {"empty": 1}},
        "bad_value_samples": {"empty": [{"key": "k", "type": "string", "size": 0, "size_unit": "bytes"}]},
        "servers": [{"server": "h:1/0", "finished": False, "scanned_percent": 40.0, "run_id": "r", "restarts": 0,
                     "ping": {"before": latency_stats([0.001]), "during": latency_stats([0.002]),
                              "failed_pings": 0, "error": None}}],
        "error": None, "resume_command": "echoseen backfill --resume",
    }
    text = render_summary(summary)
    assert "Backfill interrupted" in text
    assert "placeholder 1" in text
    assert "k (string, 0 bytes)" in text
    assert "PING latency before: p50 1.00 ms" in text
    assert "resume with: echoseen backfill --resume" in text


def test_render_report_marks_incomplete():
    report = AgeReport(datetime(2026, 1, 1, tzinfo=timezone.utc), "", 1024).to_json()
    report.update({"status": "interrupted", "servers": []})
    assert "INCOMPLETE" in render_report(report)
