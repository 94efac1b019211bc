"""deploy/systemd units: restart policy, secrets, hardening, and systemd-analyze where it exists."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from echoseen.errors import EXIT_CONFIG

UNIT_DIR = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNITS = {"echoseen-capture.service": "capture", "echoseen-replicator.service": "replicate"}


def read_unit(path: Path) -> configparser.ConfigParser:
    # systemd allows repeated keys; strict=False keeps the last one, enough for these checks.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(path.read_text())
    return parser


@pytest.mark.parametrize(("unit_name", "subcommand"), list(UNITS.items()))
def test_unit_runs_subcommand(unit_name, subcommand):
    text = (UNIT_DIR / unit_name).read_text()
    service = read_unit(UNIT_DIR / unit_name)["Service"]
    assert service["ExecStart"].split()[1:] == [subcommand]
    assert "Environment=ECHOSEEN_CONFIG=/etc/echoseen/echoseen.toml" in text


@pytest.mark.parametrize("unit_name", list(UNITS))
def test_unit_restart_policy(unit_name):
    service = read_unit(UNIT_DIR / unit_name)["Service"]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == str(EXIT_CONFIG)
    assert service["RestartSec"]
    assert service["KillSignal"] == "SIGTERM"


@pytest.mark.parametrize("unit_name", list(UNITS))
def test_unit_secrets_and_hardening(unit_name):
    service = read_unit(UNIT_DIR / unit_name)["Service"]
    assert service["EnvironmentFile"] == "/etc/echoseen/secrets.env"
    assert service["User"] == "echoseen"
    for option in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "RestrictSUIDSGID"):
        assert service[option] == "yes", option
    assert service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == ""


@pytest.mark.parametrize("unit_name", list(UNITS))
def test_unit_systemd_analyze(unit_name, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    # The real ExecStart does not exist on a test machine, and verify checks that it does.
    text = "\n".join("ExecStart=/bin/true" if line.startswith("ExecStart=") else line
                     for line in (UNIT_DIR / unit_name).read_text().splitlines())
    copy = tmp_path / unit_name
    copy.write_text(text + "\n")
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr
