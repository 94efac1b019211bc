"""Run every benchmark script of bench/ with tiny sizes, so the scripts keep working as the product changes.

The scripts run as subprocesses on the session's Kafka and Kask (each starts
its own Redis). These runs check that a script completes and prints its
result document; the figures of runs this small mean nothing, and nothing
here asserts on timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
SCRIPT_TIMEOUT_S = 300


def run_script(script: str, *args: str) -> dict:
    completed = subprocess.run([sys.executable, str(BENCH_DIR / script), *args], capture_output=True, text=True,
                               timeout=SCRIPT_TIMEOUT_S, check=False)
    assert completed.returncode == 0, f"{script} exited with {completed.returncode}:\n{completed.stderr[-4000:]}"
    result = json.loads(completed.stdout)
    assert "figures" in result, f"{script} printed no figures: {completed.stdout[:2000]}"
    assert "machine" in result
    assert "load_average" in result
    return result


@pytest.fixture
def services(kafka_server, kask_server) -> list[str]:
    return ["--kafka", kafka_server.bootstrap, "--kask", kask_server.url]


def test_bench_backfill(services):
    result = run_script("bench_backfill.py", "--keys", "3000", "--unrelated", "600", "--partitions", "2",
                        "--with-daemons", *services)

    assert result["snapshot"]["status"] == "complete"
    assert result["snapshot"]["matched"] == 3000
    assert result["baseline"]["before"]["read"] == 3000
    assert result["with_daemons"]["backfill"]["status"] == "complete"


def test_bench_capture(kafka_server):
    result = run_script("bench_capture.py", "--target", "300", "--duration", "3", "--no-search",
                        "--baseline-duration", "1", "--echo-keys", "1000", "--partitions", "2",
                        "--kafka", kafka_server.bootstrap)

    step = result["steps"][0]
    assert step["notifications"] == step["notifications_expected"]
    assert step["gaps"] == 0
    assert result["baseline"]["before"]["all_received"]


def test_bench_channels(kafka_server):
    result = run_script("bench_channels.py", "--rate", "300", "--duration", "2", "--max-duration", "1",
                        "--echo-keys", "1000", "--partitions", "2", "--kafka", kafka_server.bootstrap)

    modes = [run["mode"] for run in result["writer_max_runs"]]
    assert modes == ["off", "keyspace", "keyevent"]
    by_mode = {run["mode"]: run for run in result["capture_runs"]}
    assert by_mode["keyspace"]["notifications_ignored"] == 0
    assert by_mode["keyevent"]["notifications_ignored"] > 0


def test_bench_replicator(services):
    result = run_script("bench_replicator.py", "--keys", "300", "--baseline-keys", "100", "--partitions", "2",
                        *services)

    assert result["replicator"]["outcomes"] == {"written": 300}
    assert result["spot_check"]["wrong_or_missing"] == 0


def test_bench_end_to_end(services):
    result = run_script("bench_end_to_end.py", "--rate", "50", "--duration", "4", "--warmup", "1",
                        "--probe-interval", "0.5", "--partitions", "2", *services)

    assert result["probe"]["failure_count"] == 0
    assert result["figures"]["samples"] == result["probe"]["probes"]


def test_bench_migration(services):
    result = run_script("bench_migration.py", "--keys", "1000", "--partitions", "2", *services)

    published = result["backfill_summary"]["published"]
    assert result["replicator_outcomes"] == {"written": published}
