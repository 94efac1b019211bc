"""Helpers of the security suite: secret files, `echoseen` runs with their output kept, the end-to-end flow.

Every run's output is kept on the Scenario, so a test can check afterwards
that no secret value appears in any log line, error message or printed output.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

import redis

from echoseen import config as config_module
from echoseen.kafka import admin_client, create_topics
from helpers import ECHOSEEN, Daemon, now_value

CLI_TIMEOUT_S = 120
# The SCRAM user of the SASL_SSL Kafka listener.
SASL_USER = "echoseen"
FLOW_TIMEOUT_S = 90.0
KEYS_BEFORE_CAPTURE = 15
KEYS_DURING_CAPTURE = 15


@dataclass
class CliResult:
    status: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> dict:
        return json.loads(self.stdout)


def write_secret(path: Path, value: str) -> Path:
    """Write a secret file the way an operator should: the value on the first line, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def with_sections(config: config_module.Config, **sections: dict) -> config_module.Config:
    for name, overrides in sections.items():
        config = replace(config, **{name: replace(getattr(config, name), **overrides)})
    config_module.validate(config)
    return config


@dataclass
class Scenario:
    """One test's configuration, the daemons it started and the output of every run, for the secret checks."""

    config: config_module.Config
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    daemons: list[Daemon] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    runs: int = 0

    def write_config(self, config: config_module.Config | None = None) -> Path:
        self.runs += 1
        path = self.workdir / f"echoseen-{self.runs}.toml"
        path.write_text(config_module.to_toml(config or self.config))
        return path

    def cli(self, *args: str, config: config_module.Config | None = None, env: dict[str, str] | None = None,
            timeout_s: float = CLI_TIMEOUT_S) -> CliResult:
        """Run `echoseen <args> -c <file>` with no ECHOSEEN_* variables but the scenario's and ``env``."""
        environment = {key: value for key, value in os.environ.items() if not key.startswith("ECHOSEEN_")}
        environment.update(self.env)
        environment.update(env or {})
        config_path = self.write_config(config)
        completed = subprocess.run([ECHOSEEN, *args, "-c", str(config_path)], capture_output=True, text=True,
                                   env=environment, timeout=timeout_s)
        result = CliResult(completed.returncode, completed.stdout, completed.stderr)
        self.outputs.append(f"$ echoseen {' '.join(args)}\n{result.output}")
        return result

    def start(self, command: str, config: config_module.Config | None = None, env: dict[str, str] | None = None,
              wait: bool = True, timeout_s: float = 90.0) -> Daemon:
        """Start `echoseen capture` or `echoseen replicate` and, with ``wait``, wait until /readyz returns 200."""
        config = config or self.config
        if command == "capture":
            # Short heartbeats and lock lifetimes make start and stop quick.
            config = replace(config, capture=replace(config.capture, heartbeat_interval_s=0.5,
                                                     heartbeat_timeout_s=5.0, instance_lock_ttl_s=5.0))
        daemon = Daemon(self.workdir / f"{command}-{len(self.daemons)}", command, config,
                        env={**self.env, **(env or {})}).start()
        self.daemons.append(daemon)
        if wait:
            daemon.wait_ready(timeout_s=timeout_s)
        return daemon

    def scrape(self, daemon: Daemon) -> str:
        """Fetch /metrics, /healthz and /readyz of a running daemon and keep them with the outputs."""
        pages = []
        for path in ("/metrics", "/healthz", "/readyz"):
            try:
                with urllib.request.urlopen(daemon.url(path), timeout=5) as response:
                    pages.append(response.read().decode(errors="replace"))
            except urllib.error.HTTPError as exc:
                pages.append(exc.read().decode(errors="replace"))
        text = "\n".join(pages)
        self.outputs.append(f"# {daemon.command} endpoints\n{text}")
        return text

    def stop_daemons(self) -> None:
        """Stop every daemon (SIGTERM, then SIGKILL) and keep their logs."""
        for daemon in self.daemons:
            if daemon.process is not None and daemon.process.poll() is None:
                try:
                    daemon.stop(timeout_s=40)
                except subprocess.TimeoutExpired:
                    daemon.kill()
            self.outputs.append(f"# {daemon.command} log\n{daemon.log()}")
        self.daemons = []

    def all_output(self) -> str:
        return "\n".join(self.outputs)

    def create_topics(self) -> None:
        create_topics(self.config, admin_client(self.config))


def assert_no_secret(text: str, secrets: dict[str, str]) -> None:
    """Fail when any secret value, or its last 16 characters (random in the test values), appears in ``text``."""
    assert text, "no output was collected, so the check would prove nothing"
    for name, value in secrets.items():
        assert value not in text, f"the {name} appears in the output"
        assert value[-16:] not in text, f"the last 16 characters of the {name} appear in the output"


def write_echo_keys(client: redis.Redis, wiki: str, start: int, count: int) -> dict[bytes, bytes]:
    """Write ``count`` Echo seen-time keys of ``wiki`` as Echo does (SETEX, one year), half alerts, half messages."""
    written = {}
    for user_id in range(start, start + count):
        kind = "alert" if user_id % 2 else "message"
        key = f"{wiki}:echo:seen:{kind}:time:{user_id}".encode()
        value = now_value()
        client.setex(key, 31536000, value)
        written[key] = value
    return written


def wait_for_verify(scenario: Scenario, wiki: str, expected_keys: int, timeout_s: float = FLOW_TIMEOUT_S,
                    config: config_module.Config | None = None) -> dict:
    """Run `echoseen verify --wiki` until it passes with every key equal; return its JSON result."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = scenario.cli("verify", "--wiki", wiki, "--no-store", "--json", config=config)
        document = result.json() if result.stdout.strip().startswith("{") else {}
        if (result.status == 0 and document.get("passed")
                and document.get("categories", {}).get("equal") == expected_keys):
            return document
        if time.monotonic() > deadline:
            raise AssertionError(f"verify did not pass with {expected_keys} equal keys within {timeout_s:.0f} s; "
                                 f"last exit status {result.status}:\n{result.output[-3000:]}")
        time.sleep(1.0)


def run_flow(scenario: Scenario, admin: redis.Redis, wiki: str) -> dict:
    """Run the product end to end against the scenario's Redis: backfill, capture, replicator, verify.

    Keys written before the capture starts reach Kafka through the backfill,
    and keys written while it runs reach Kafka through the capture. The
    replicator writes them all to Kask, and verify must find every key equal.
    Returns verify's JSON result.
    """
    write_echo_keys(admin, wiki, 1, KEYS_BEFORE_CAPTURE)
    capture = scenario.start("capture")
    live = write_echo_keys(admin, wiki, 1000, KEYS_DURING_CAPTURE)

    backfill = scenario.cli("backfill", "--wiki", wiki, "--json")
    assert backfill.status == 0, backfill.output[-3000:]

    scenario.start("replicate")
    document = wait_for_verify(scenario, wiki, KEYS_BEFORE_CAPTURE + KEYS_DURING_CAPTURE)

    # The capture published the live keys itself, not only the backfill.
    assert capture.metric("echoseen_capture_events_published_total", 'origin="live"') >= len(live)
    scenario.scrape(capture)
    return document
