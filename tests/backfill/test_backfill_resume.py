"""Checkpoints and stops: a killed job resumes without losing keys, signals stop it cleanly, restarts rescan."""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from backfill_helpers import (expected_by_key, key_counts, publishable, read_events, run_backfill, spec,
                              start_backfill_process, write_config)

from capture import backfill_checkpoint
from devstack.keyspace import load
from devstack.redis_server import start_redis
from echoseen.errors import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_OK, ConfigError

pytestmark = pytest.mark.stack


def read_checkpoint(config) -> dict | None:
    path = Path(config.backfill.checkpoint_file)
    return json.loads(path.read_text()) if path.exists() else None


def wait_for_progress(config, process, minimum_cursor_moves: int, timeout_s: float = 60.0) -> dict:
    """Wait until the checkpoint on disk has moved past cursor 0 and been rewritten a few times."""
    deadline = time.monotonic() + timeout_s
    cursors = set()
    while time.monotonic() < deadline:
        assert process is None or process.poll() is None, "the backfill ended before the test could stop it"
        document = read_checkpoint(config)
        if document:
            server = next(iter(document["servers"].values()), None)
            if server and server["cursor"] != 0 and not server["finished"]:
                cursors.add(server["cursor"])
                if len(cursors) >= minimum_cursor_moves:
                    return document
        time.sleep(0.1)
    raise AssertionError(f"the checkpoint did not advance within {timeout_s:.0f} s")


def test_resume_after_kill(bf_config, redis_client, unique_wiki, tmp_path):
    keyspace = spec(40_000, (unique_wiki, "global"), unrelated_fraction=0)
    load(redis_client, keyspace)
    expected = expected_by_key(keyspace)
    # Slow enough that the kill lands mid-scan.
    config = replace(bf_config, backfill=replace(bf_config.backfill, max_keys_per_s=10_000))
    config_path = write_config(config, tmp_path / "backfill.toml")

    process = start_backfill_process(config_path, tmp_path / "first.log")
    try:
        at_kill = wait_for_progress(config, process, minimum_cursor_moves=3)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    # The checkpoint file is whole (written atomically) and not finished.
    saved = backfill_checkpoint.load(Path(config.backfill.checkpoint_file))
    entry = next(iter(saved.servers.values()))
    assert not entry.finished
    assert entry.cursor != 0
    published_before = key_counts(read_events(config))
    assert 0 < len(published_before) < len(publishable(expected))

    process = start_backfill_process(config_path, tmp_path / "second.log", "--resume", "--json")
    output, _ = process.communicate(timeout=180)
    assert process.returncode == EXIT_OK, (tmp_path / "second.log").read_text()[-3000:]
    summary = json.loads(output)
    assert summary["status"] == "complete"
    assert summary["resumed"] is True
    # The resumed run starts at the checkpoint, so it scans less than the whole keyspace.
    assert summary["this_run"]["scanned"] < len(expected)

    counts = key_counts(read_events(config))
    wanted = publishable(expected)
    missing = wanted - set(counts)
    assert not missing, f"{len(missing)} keys lost across the kill, e.g. {sorted(missing)[:5]}"
    assert set(counts) == wanted
    duplicates = sum(count - 1 for count in counts.values())
    print(f"kill at cursor {next(iter(at_kill['servers'].values()))['cursor']}: {len(published_before)} keys "
          f"published before the kill, {duplicates} duplicates after the resume out of {len(wanted)} keys")
    # Only keys published after the last checkpoint can be published twice.
    assert duplicates < len(wanted) // 2


@pytest.mark.parametrize("signum, exit_status", [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, EXIT_OK)])
def test_signal_stops_cleanly(bf_config, redis_client, unique_wiki, tmp_path, signum, exit_status):
    keyspace = spec(25_000, (unique_wiki,), unrelated_fraction=0)
    load(redis_client, keyspace)
    expected = expected_by_key(keyspace)
    config = replace(bf_config, backfill=replace(bf_config.backfill, max_keys_per_s=8_000))
    config_path = write_config(config, tmp_path / "backfill.toml")
    log_path = tmp_path / "stopped.log"

    process = start_backfill_process(config_path, log_path, "--json")
    wait_for_progress(config, process, minimum_cursor_moves=2)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)

    assert process.returncode == exit_status, log_path.read_text()[-3000:]
    summary = json.loads(output)
    assert summary["status"] == "interrupted"
    assert "--resume" in summary["resume_command"]
    assert str(config_path) in summary["resume_command"]
    log_text = log_path.read_text()
    assert "continue it with: echoseen backfill --resume" in log_text
    # Everything published before the stop was acknowledged and is covered by the checkpoint.
    saved = backfill_checkpoint.load(Path(config.backfill.checkpoint_file))
    entry = next(iter(saved.servers.values()))
    assert not entry.finished
    assert entry.counts["published"] == summary["totals"]["published"]
    assert summary["totals"]["published"] == len(read_events(config))

    status, resumed = run_backfill(config, "--resume")
    assert status == EXIT_OK, resumed
    assert set(key_counts(read_events(config))) == publishable(expected)


def test_redis_restart_rescans(make_config, kafka_server, unique_wiki, tmp_path, caplog):
    from echoseen.kafka import admin_client, create_topics

    server = start_redis(tmp_path / "redis")
    try:
        client = server.client()
        keyspace = spec(40_000, (unique_wiki,), unrelated_fraction=0)
        load(client, keyspace)
        expected = expected_by_key(keyspace)
        # The restarted server loads this snapshot of the data, with a new run_id.
        client.save()
        old_run_id = client.info("server")["run_id"]
        config = make_config(redis_server=server, kafka_server=kafka_server,
                             backfill={"checkpoint_interval_s": 0.3, "ping_sample_interval_s": 0,
                                       "max_keys_per_s": 12_000, "reconnect_timeout_s": 60.0})
        create_topics(config, admin_client(config))

        results = []
        job = threading.Thread(target=lambda: results.append(run_backfill(config)), daemon=True)
        job.start()
        wait_for_progress(config, None, minimum_cursor_moves=2)
        server.restart()
        job.join(timeout=180)
        assert not job.is_alive(), "the backfill did not finish after the Redis restart"

        status, summary = results[0]
        assert status == EXIT_OK, summary
        new_run_id = server.client().info("server")["run_id"]
        assert new_run_id != old_run_id
        entry = summary["servers"][0]
        assert entry["restarts"] == 1
        assert entry["run_id"] == new_run_id
        restart_logs = [record.getMessage() for record in caplog.records if "has a new run_id" in record.getMessage()]
        assert len(restart_logs) == 1
        assert "scanning" in restart_logs[0]
        assert "from the start" in restart_logs[0]
        # The rescan from cursor 0 covers every key, whatever the old cursor had passed.
        assert set(key_counts(read_events(config))) == publishable(expected)
        assert summary["this_run"]["scanned"] > len(expected)
    finally:
        server.stop()


def test_resume_after_restart_between_runs(make_config, kafka_server, unique_wiki, tmp_path, caplog):
    from echoseen.kafka import admin_client, create_topics

    server = start_redis(tmp_path / "redis")
    try:
        client = server.client()
        keyspace = spec(20_000, (unique_wiki,), unrelated_fraction=0)
        load(client, keyspace)
        expected = expected_by_key(keyspace)
        client.save()
        config = make_config(redis_server=server, kafka_server=kafka_server,
                             backfill={"checkpoint_interval_s": 0.3, "ping_sample_interval_s": 0,
                                       "max_keys_per_s": 8_000})
        create_topics(config, admin_client(config))
        config_path = write_config(config, tmp_path / "backfill.toml")
        process = start_backfill_process(config_path, tmp_path / "first.log")
        try:
            wait_for_progress(config, process, minimum_cursor_moves=2)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        server.restart()

        status, summary = run_backfill(replace(config, backfill=replace(config.backfill, max_keys_per_s=0)),
                                       "--resume")

        assert status == EXIT_OK, summary
        assert summary["servers"][0]["restarts"] == 1
        assert any("saved cursor is invalid" in record.getMessage() for record in caplog.records)
        assert set(key_counts(read_events(config))) == publishable(expected)
    finally:
        server.stop()


def test_resume_with_other_settings_rejected(bf_config, redis_client, unique_wiki):
    load(redis_client, spec(2_000, (unique_wiki,), unrelated_fraction=0))
    status, _ = run_backfill(bf_config, "--wiki", unique_wiki)
    assert status == EXIT_OK

    for argv in (["--resume"], ["--resume", "--wiki", "global"], ["--resume", "--wiki", unique_wiki,
                                                                  "--cutoff", "2024-01-01"]):
        with pytest.raises(ConfigError) as failure:
            run_backfill(bf_config, *argv)
        assert failure.value.exit_status == EXIT_CONFIG
        assert "other settings" in str(failure.value)
        assert "--restart" in str(failure.value)
    other_topic = replace(bf_config, kafka=replace(bf_config.kafka, topic=bf_config.kafka.topic + ".other"))
    with pytest.raises(ConfigError) as failure:
        run_backfill(other_topic, "--resume", "--wiki", unique_wiki)
    assert "topic" in str(failure.value)

    # The same settings resume; the checkpoint is complete, so nothing is scanned again.
    status, summary = run_backfill(bf_config, "--resume", "--wiki", unique_wiki)
    assert status == EXIT_OK
    assert summary["this_run"]["scanned"] == 0


def test_existing_checkpoint_needs_resume_or_restart(bf_config, redis_client, unique_wiki):
    load(redis_client, spec(2_000, (unique_wiki,), unrelated_fraction=0))
    assert run_backfill(bf_config)[0] == EXIT_OK

    with pytest.raises(ConfigError) as failure:
        run_backfill(bf_config)
    assert failure.value.exit_status == EXIT_CONFIG
    assert "--resume" in str(failure.value)
    assert "checkpoint_file" in str(failure.value)

    status, summary = run_backfill(bf_config, "--restart")
    assert status == EXIT_OK
    assert summary["this_run"]["scanned"] > 0


def test_resume_without_checkpoint_rejected(bf_config, redis_client):
    with pytest.raises(ConfigError) as failure:
        run_backfill(bf_config, "--resume")
    assert failure.value.exit_status == EXIT_CONFIG
    assert "no checkpoint" in str(failure.value)


def test_redis_gone_stops_with_checkpoint(make_config, kafka_server, unique_wiki, tmp_path):
    from echoseen.errors import EXIT_UNAVAILABLE
    from echoseen.kafka import admin_client, create_topics

    server = start_redis(tmp_path / "redis")
    try:
        keyspace = spec(20_000, (unique_wiki,), unrelated_fraction=0)
        load(server.client(), keyspace)
        config = make_config(redis_server=server, kafka_server=kafka_server,
                             backfill={"checkpoint_interval_s": 0.3, "ping_sample_interval_s": 0,
                                       "max_keys_per_s": 5_000, "reconnect_timeout_s": 2.0})
        create_topics(config, admin_client(config))
        results = []
        job = threading.Thread(target=lambda: results.append(run_backfill(config)), daemon=True)
        job.start()
        wait_for_progress(config, None, minimum_cursor_moves=2)
        server.stop()
        job.join(timeout=60)
        assert not job.is_alive()

        status, summary = results[0]
        assert status == EXIT_UNAVAILABLE
        assert summary["status"] == "failed"
        assert "[backfill] reconnect_timeout_s" in summary["error"]
        assert "--resume" in summary["resume_command"]
        saved = backfill_checkpoint.load(Path(config.backfill.checkpoint_file))
        entry = next(iter(saved.servers.values()))
        assert entry.cursor != 0
        assert entry.counts["published"] == len(read_events(config))
    finally:
        server.stop()
