"""`echoseen-devstack up`, `status` and `down`, and the demo's --external mode on the stack that `up` left running."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis

from devstack.demo_stack import is_same_process

ROOT = Path(__file__).resolve().parents[2]


def devstack(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "devstack.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s)


@pytest.mark.stack
@pytest.mark.timeout(1200)
def test_up_demo_down(tmp_path):
    workdir = tmp_path / "dev"
    processes: dict = {}
    up = devstack("up", "--dir", str(workdir))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        document = json.loads((workdir / "stack.json").read_text())
        processes = document["processes"]
        assert set(processes) == {"redis", "kafka", "cassandra", "kask"}

        # The services outlive the `up` command.
        for name, entry in processes.items():
            assert is_same_process(entry), f"{name} stopped when `up` exited"
        assert redis.Redis(port=processes["redis"]["port"]).ping()
        with urllib.request.urlopen(processes["kask"]["url"].split("/echoseen/")[0] + "/healthz", timeout=5) as reply:
            assert reply.status == 200
        assert (workdir / "echoseen.toml").exists()

        status = devstack("status", "--dir", str(workdir))
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("running") == 4

        demo = subprocess.run(
            [sys.executable, "-m", "devstack.demo", "--external", "--config", str(workdir / "echoseen.toml"),
             "--keys", "2000", "--write-rate", "50", "--steady-s", "3", "--dir", str(tmp_path / "demo")],
            cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        report = json.loads((tmp_path / "demo" / "report.json").read_text())
        assert report["verify"]["passed"] is True
        assert report["live_writes"]["replicated"] == report["live_writes"]["made"]
        # The demo stopped the daemons it started and left the stack alone.
        assert {process["name"] for process in report["processes"]} >= {"echoseen-capture", "echoseen-replicator"}
        assert not any(process["name"] == "redis" for process in report["processes"])
        for name, entry in processes.items():
            assert is_same_process(entry), f"the demo stopped {name}"
    finally:
        down = devstack("down", "--dir", str(workdir))

    assert down.returncode == 0, down.stdout + down.stderr
    for name, entry in processes.items():
        assert not is_same_process(entry), f"{name} (pid {entry['pid']}) still runs after down"
    assert not (workdir / "stack.json").exists()
    status = devstack("status", "--dir", str(workdir))
    assert status.returncode == 1
