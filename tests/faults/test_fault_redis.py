"""Redis-side faults under live writes: a restart, pub/sub kills, and application clocks that run behind Redis.

Every test ends with `echoseen verify` on the keys Redis holds. The clock
tests use a clock-skew margin of a few seconds instead of the default five
minutes, so that a short gap shows both sides of the bound.
"""

from __future__ import annotations

import time

import pytest

from fault_harness import BURST_WRITES, CLI_TIMEOUT_S, DOWN_S, LOAD_S, Load, echo_keys, run_cli, wait_for
from helpers import now_value

pytestmark = pytest.mark.stack

SKEW_MARGIN_S = 5.0


def test_redis_restart(build_pipeline, private_redis, unique_wiki):
    pipeline = build_pipeline(redis_server=private_redis)
    keys = echo_keys(unique_wiki)
    capture, _ = pipeline.start_watched(keys)

    with Load(private_redis.client(), keys):
        time.sleep(LOAD_S)
        # Without persistence the restart empties Redis, the capture's lock and heartbeat keys included.
        private_redis.restart(downtime_s=DOWN_S)
        # These writes race the capture's resubscription, which backs off while Redis is down; whichever
        # wins, the restart gap's catch-up scan or the subscription carries them.
        racer = private_redis.client()
        for key in keys[:200]:
            racer.setex(key, 31_536_000, now_value())
        time.sleep(LOAD_S)

    assert capture.process.poll() is None, capture.log()[-3000:]
    pipeline.assert_nothing_lost()
    assert capture.metric("echoseen_capture_gaps_total", 'reason="redis_restart"') >= 1
    wait_for(lambda: capture.metric("echoseen_capture_open_gaps") == 0, 60, "the restart gap to close")
    assert "restarted or failed over" in capture.log()
    assert capture.stop() == 0


def test_output_buffer_kill_in_burst(build_pipeline, redis_client, unique_wiki):
    pipeline = build_pipeline()
    keys = echo_keys(unique_wiki)
    capture, _ = pipeline.start_watched(keys)
    original = redis_client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]

    with Load(pipeline.redis_client, keys):
        time.sleep(LOAD_S)
        try:
            # A pub/sub client over 64 KiB of unsent notifications is disconnected by the server.
            redis_client.config_set("client-output-buffer-limit", "pubsub 65536 32768 1")
            # One pipeline: Redis then produces notifications far faster than the capture reads them.
            value = now_value()
            pipe = redis_client.pipeline(transaction=False)
            for index in range(BURST_WRITES):
                pipe.execute_command("SETEX", keys[index % len(keys)], 31_536_000, value)
            pipe.execute()
        finally:
            redis_client.config_set("client-output-buffer-limit", original)
        time.sleep(LOAD_S)

    wait_for(lambda: capture.metric("echoseen_capture_subscription_reconnects_total") >= 1, 30,
             "the capture to reconnect after the output-buffer kill")
    pipeline.assert_nothing_lost()
    assert capture.metric("echoseen_capture_gaps_total", 'reason="disconnected"') >= 1
    assert capture.stop() == 0


def test_client_kill(build_pipeline, redis_client, unique_wiki):
    pipeline = build_pipeline()
    keys = echo_keys(unique_wiki)
    capture, _ = pipeline.start_watched(keys)

    with Load(pipeline.redis_client, keys):
        time.sleep(LOAD_S)
        assert redis_client.client_kill_filter(_type="pubsub") >= 1
        time.sleep(LOAD_S)

    pipeline.assert_nothing_lost()
    assert capture.metric("echoseen_capture_gaps_total", 'reason="disconnected"') >= 1
    assert capture.stop() == 0


def test_clock_behind_within_margin(build_pipeline, unique_wiki):
    pipeline = build_pipeline(capture={"clock_skew_margin_s": SKEW_MARGIN_S})
    keys = echo_keys(unique_wiki)
    first = pipeline.capture()
    pipeline.replicator()
    pipeline.watch_keys(keys)

    # Every application server's clock runs 3 s behind Redis, less than the 5 s margin.
    with Load(pipeline.redis_client, keys, clock_offset_s=-(SKEW_MARGIN_S - 2)):
        time.sleep(LOAD_S)
        first.kill()
        time.sleep(DOWN_S)
        second = pipeline.capture()
        time.sleep(LOAD_S)

    pipeline.assert_nothing_lost()
    assert second.metric("echoseen_capture_catchup_keys_published_total") > 0
    assert second.stop() == 0


def test_clock_behind_beyond_margin(build_pipeline, unique_wiki):
    """The known limit: a seen time older than the gap start minus the margin is not carried by the catch-up.

    Verify finds those keys missing, and a backfill of the wiki repairs them.
    """
    pipeline = build_pipeline(capture={"clock_skew_margin_s": SKEW_MARGIN_S})
    keys = echo_keys(unique_wiki)
    late_wiki = f"late{unique_wiki}"
    late_keys = echo_keys(late_wiki, 200)
    first = pipeline.capture()
    replicator = pipeline.replicator()

    with Load(pipeline.redis_client, keys):
        time.sleep(LOAD_S)
        first.kill()
        # Users whose application server's clock runs a minute behind Redis open their popups during the gap.
        with Load(pipeline.redis_client, late_keys, clock_offset_s=-60.0) as late:
            time.sleep(DOWN_S)
        second = pipeline.capture()
        time.sleep(LOAD_S)
    wait_for(lambda: second.metric("echoseen_capture_open_gaps") == 0, 60, "the startup gap to close")

    behind = pipeline.settle(timeout_s=10)
    result, document = pipeline.verify()
    missing = {sample["key"] for sample in document["samples"].get("missing_in_kask", [])}
    assert result.status == 1
    assert missing == late.written_keys
    assert {key.decode() for key in behind} == late.written_keys
    assert document["categories"].get("kask_older", 0) == 0

    # The remedy: snapshot the affected keys; the replicator applies them like any other event.
    backfill = run_cli(["backfill", "--wiki", late_wiki], pipeline.verify_config_path(), timeout_s=CLI_TIMEOUT_S)
    assert backfill.status == 0, backfill.stderr[-3000:]
    pipeline.assert_nothing_lost()
    assert replicator.stop() == 0
    assert second.stop() == 0
