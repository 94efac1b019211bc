"""Ctrl+C or SIGTERM in the middle of the demo stops every process it started and still writes the report."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.demo_stack import is_same_process

ROOT = Path(__file__).resolve().parents[2]
BACKFILL_PHASE = "backfill while writing"
CATCH_UP_PHASE = "wait until the replicator caught up"


def read_until(demo: subprocess.Popen, text: str, lines: list[str], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    for line in demo.stdout:
        lines.append(line)
        if text in line or time.monotonic() > deadline:
            break
    assert any(text in line for line in lines), "".join(lines)


def wait_for_log_line(path: Path, timeout_s: float = 120) -> None:
    """Wait until a log file has content, which proves the command writing it runs."""
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and path.stat().st_size > 0):
        assert time.monotonic() < deadline, f"{path} stayed empty for {timeout_s} s"
        time.sleep(0.1)


@pytest.mark.stack
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("signum", "phase"), [(signal.SIGINT, BACKFILL_PHASE), (signal.SIGTERM, CATCH_UP_PHASE)],
                         ids=["sigint-during-backfill", "sigterm-during-catch-up"])
def test_demo_interrupted_cleans_up(tmp_path, signum, phase):
    workdir = tmp_path / "stack"
    demo = subprocess.Popen(
        [sys.executable, "-m", "devstack.demo", "--keys", "20000", "--write-rate", "100", "--dir", str(workdir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        read_until(demo, phase, lines)
        if phase == BACKFILL_PHASE:
            # The interrupt must reach the demo while `echoseen backfill` runs as its child.
            wait_for_log_line(workdir / "logs" / "backfill.log")
        demo.send_signal(signum)
        output, _ = demo.communicate(timeout=300)
        lines.append(output)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()

    assert demo.returncode == 130, "".join(lines)
    report = json.loads((workdir / "report.json").read_text())
    assert report["error"].startswith("interrupted")
    assert report["exit_status"] == 130
    names = {process["name"] for process in report["processes"]}
    assert {"redis", "kafka", "cassandra", "kask", "echoseen-capture", "echoseen-replicator",
            "echoseen backfill"} <= names
    for process in report["processes"]:
        assert not is_same_process(process), f"{process['name']} (pid {process['pid']}) still runs"
