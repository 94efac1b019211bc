"""The README's first command, smaller: `python -m devstack.demo` on its own stack, from start to report.

Sizes come from the environment so the full-size run is one variable away:
ECHOSEEN_TEST_DEMO_KEYS (default 20000), ECHOSEEN_TEST_DEMO_WRITE_RATE (100 per second) and
ECHOSEEN_TEST_DEMO_STEADY_S (5 seconds of steady state).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.demo_stack import is_same_process

KEYS = int(os.environ.get("ECHOSEEN_TEST_DEMO_KEYS", "20000"))
WRITE_RATE = os.environ.get("ECHOSEEN_TEST_DEMO_WRITE_RATE", "100")
STEADY_S = os.environ.get("ECHOSEEN_TEST_DEMO_STEADY_S", "5")

# The module fixture runs the whole demo inside whichever test comes first, so every test gets its timeout.
pytestmark = [pytest.mark.stack, pytest.mark.timeout(1600)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    workdir = tmp_path_factory.mktemp("demo") / "stack"
    result = subprocess.run(
        [sys.executable, "-m", "devstack.demo", "--keys", str(KEYS), "--write-rate", WRITE_RATE,
         "--steady-s", STEADY_S, "--dir", str(workdir)],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=1500)
    report_path = workdir / "report.json"
    assert report_path.exists(), f"no report; exit status {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result, json.loads(report_path.read_text())


def test_demo_exit_status(demo_run):
    result, report = demo_run
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert report["error"] is None
    assert "result:       OK" in result.stdout


def test_demo_backfill_copied(demo_run):
    _, report = demo_run
    backfill = report["backfill"]
    assert backfill["exit_status"] == 0
    assert backfill["published"] > 0
    assert backfill["published"] <= report["keyspace"]["echo_keys"]
    # Unrelated keys are scanned but never copied.
    assert backfill["scanned"] > backfill["matched"]


def test_demo_live_writes_replicated(demo_run):
    _, report = demo_run
    live = report["live_writes"]
    assert live["made"] > 0
    assert live["during_backfill"] > 0
    assert live["during_steady_state"] > 0
    assert live["replicated"] == live["made"]
    assert live["keys_confirmed_in_kask"] == live["keys"]


def test_demo_verify_passed(demo_run):
    _, report = demo_run
    verify = report["verify"]
    assert verify["exit_status"] == 0
    assert verify["passed"] is True
    assert verify["bad"] == 0
    assert verify["compared"] == report["keyspace"]["echo_keys"]


def test_demo_delays_measured(demo_run):
    _, report = demo_run
    steady = report["probe"]["steady_state"]
    assert steady["probes"] > 0
    assert steady["unfinished"] == 0
    assert steady["p50_s"] <= steady["p95_s"] <= steady["p99_s"] <= steady["max_s"]
    assert report["replicator"]["end_to_end_observations"] > 0


def test_demo_phases_timed(demo_run):
    _, report = demo_run
    names = [phase["name"] for phase in report["phases"]]
    assert len(names) == 10
    assert names[0].startswith("start Redis, Kafka, Cassandra and Kask")
    assert names[-1].startswith("verify")
    assert set(report["stack_startup_s"]) == {"redis", "kafka", "cassandra", "kask"}


def test_demo_leaves_nothing_running(demo_run):
    _, report = demo_run
    names = {process["name"] for process in report["processes"]}
    assert {"redis", "kafka", "cassandra", "kask", "echoseen-capture", "echoseen-replicator",
            "echoseen backfill", "echoseen verify"} <= names
    for process in report["processes"]:
        assert process["start_ticks"] is not None, process
        assert not is_same_process(process), f"{process['name']} (pid {process['pid']}) still runs"
    for path in report["logs"].values():
        assert Path(path).exists(), path
