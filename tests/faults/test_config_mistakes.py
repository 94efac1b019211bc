"""Configuration mistakes for capture, replicate, backfill, verify and lag: one clear error, a status, no hang.

Each case runs the real command against the session's servers with one
mistake. It must exit on its own within MAX_FAIL_S, with status 2 (invalid
configuration) or 3 (a service unreachable or rejecting the credentials). It
must print exactly one error line, which names the setting to fix, no
traceback, and only a few lines in all, so that a supervisor restarting it
gets one short message per attempt, not a flood.

The cases run a few at a time in parallel to keep the suite short, so the
measured time to fail includes some contention.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from devstack.process import free_port
from devstack.redis_server import start_redis
from echoseen import config as config_module
from echoseen.errors import EXIT_CONFIG, EXIT_UNAVAILABLE
from echoseen.kafka import admin_client, create_topics
from fault_harness import wait_for
from helpers import ECHOSEEN, Daemon

pytestmark = pytest.mark.stack

# Upper bound on the time to fail; the slowest designed wait is the 15 s Kafka metadata timeout of the replicator.
MAX_FAIL_S = float(os.environ.get("ECHOSEEN_FAULT_MAX_FAIL_S", "45"))
MAX_OUTPUT_LINES = 12
PARALLEL_CASES = 6
REDIS_PASSWORD = "right-password"


@dataclass(frozen=True)
class Case:
    command: str
    mistake: str
    status: int
    # Each must appear in the error line: the setting and the fix.
    mentions: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.command}-{self.mistake}"


REDIS_DOWN = ("[redis] servers", "check that the server runs")
KAFKA_DOWN = ("[kafka] bootstrap_servers",)
WRONG_PASSWORD = ("rejected the credentials", "password_env")
NO_PASSWORD = ("requires a password", "password_env")
MISSING_TOPIC = ("does not exist", "echoseen topics --create")
UNKNOWN_FILE = ("unknown setting 'max_inflight'", "[replicator]", "valid settings")
UNKNOWN_ENV = ("unknown environment variable ECHOSEEN_REPLICATOR_MAX_INFLIGHT", "ECHOSEEN_REPLICATOR_MAX_IN_FLIGHT")

CASES = [
    *(Case(command, "redis_refused", EXIT_UNAVAILABLE, REDIS_DOWN) for command in ("capture", "backfill", "verify")),
    *(Case(command, "redis_silent", EXIT_UNAVAILABLE, REDIS_DOWN) for command in ("capture", "backfill", "verify")),
    *(Case(command, "redis_wrong_password", EXIT_UNAVAILABLE, WRONG_PASSWORD)
      for command in ("capture", "backfill", "verify")),
    *(Case(command, "redis_no_password", EXIT_UNAVAILABLE, NO_PASSWORD) for command in ("capture", "backfill", "verify")),
    Case("capture", "redis_notifications_off", EXIT_CONFIG, ("notify-keyspace-events", "CONFIG SET", "--allow-config-set")),
    *(Case(command, "kafka_refused", EXIT_UNAVAILABLE, KAFKA_DOWN)
      for command in ("capture", "replicate", "backfill", "verify", "lag")),
    *(Case(command, "kafka_silent", EXIT_UNAVAILABLE, KAFKA_DOWN)
      for command in ("capture", "replicate", "backfill", "verify", "lag")),
    Case("verify", "kask_refused", EXIT_UNAVAILABLE, ("[kask] url",)),
    Case("verify", "kask_silent", EXIT_UNAVAILABLE, ("[kask] url",)),
    *(Case(command, "missing_topic", EXIT_CONFIG, MISSING_TOPIC)
      for command in ("capture", "replicate", "backfill", "verify", "lag")),
    *(Case(command, "unknown_setting_file", EXIT_CONFIG, UNKNOWN_FILE)
      for command in ("capture", "replicate", "backfill", "verify", "lag")),
    *(Case(command, "unknown_setting_env", EXIT_CONFIG, UNKNOWN_ENV)
      for command in ("capture", "replicate", "backfill", "verify", "lag")),
]


@dataclass
class Outcome:
    status: int | None
    output: str
    duration_s: float
    hung: bool


class SilentServer:
    """A TCP port that accepts connections and never responds, as a hung server does."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(128)
        self.port = self.socket.getsockname()[1]
        self.accepted: list[socket.socket] = []

    def close(self) -> None:
        self.socket.close()


def config_for(case: Case, base: config_module.Config, servers: dict) -> tuple[config_module.Config, dict, str]:
    """Return the configuration with the case's mistake, the extra environment and extra TOML text."""
    config, env, extra_toml = base, {}, ""
    mistake = case.mistake
    if mistake == "redis_refused":
        config = _with(config, "redis", servers=(f"redis://127.0.0.1:{servers['closed_port']}/0",))
    elif mistake == "redis_silent":
        config = _with(config, "redis", servers=(f"redis://127.0.0.1:{servers['silent'].port}/0",))
    elif mistake in ("redis_wrong_password", "redis_no_password"):
        config = _with(config, "redis", servers=(f"redis://127.0.0.1:{servers['password_redis'].port}/0",))
        if mistake == "redis_wrong_password":
            env["ECHOSEEN_REDIS_PASSWORD"] = "wrong-password"
    elif mistake == "redis_notifications_off":
        config = _with(config, "redis", servers=(f"redis://127.0.0.1:{servers['quiet_redis'].port}/0",))
    elif mistake == "kafka_refused":
        config = _with(config, "kafka", bootstrap_servers=f"127.0.0.1:{servers['closed_port']}")
    elif mistake == "kafka_silent":
        config = _with(config, "kafka", bootstrap_servers=f"127.0.0.1:{servers['silent'].port}")
    elif mistake == "kask_refused":
        config = _with(config, "kask", url=f"http://127.0.0.1:{servers['closed_port']}/echoseen/v1/")
    elif mistake == "kask_silent":
        config = _with(config, "kask", url=f"http://127.0.0.1:{servers['silent'].port}/echoseen/v1/")
    elif mistake == "missing_topic":
        suffix = uuid.uuid4().hex[:8]
        config = _with(config, "kafka", topic=f"missing.events.{suffix}", dead_letter_topic=f"missing.dlq.{suffix}",
                       state_topic=f"missing.state.{suffix}")
    elif mistake == "unknown_setting_file":
        extra_toml = "\n[replicator]\nmax_inflight = 5\n"
    elif mistake == "unknown_setting_env":
        env["ECHOSEEN_REPLICATOR_MAX_INFLIGHT"] = "5"
    else:
        raise ValueError(f"unknown mistake {mistake!r}")
    return config, env, extra_toml


def _with(config: config_module.Config, section: str, **changes) -> config_module.Config:
    return replace(config, **{section: replace(getattr(config, section), **changes)})


def write_config(path: Path, config: config_module.Config, extra_toml: str) -> None:
    text = config_module.to_toml(config)
    if extra_toml:
        # Put the unknown setting into the existing [replicator] table: TOML forbids defining a table twice.
        section, line = extra_toml.strip().split("\n", 1)
        text = text.replace(section + "\n", section + "\n" + line + "\n", 1)
    path.write_text(text)


def run_case(case: Case, workdir: Path, base: config_module.Config, servers: dict) -> Outcome:
    config, env, extra_toml = config_for(case, base, servers)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "echoseen.toml"
    write_config(config_path, config, extra_toml)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("ECHOSEEN_")}
    environment.update(env)
    argv = [ECHOSEEN, case.command, "-c", str(config_path)]
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment, text=True)
    try:
        output, _ = process.communicate(timeout=MAX_FAIL_S)
        hung = False
    except subprocess.TimeoutExpired:
        # Give it the chance to stop cleanly first, so its log shows where it hung.
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        hung = True
    return Outcome(None if hung else process.returncode, output, time.monotonic() - started, hung)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, redis_server, kafka_server, kask_server) -> dict[str, Outcome]:
    """Run every case once, a few at a time; return the outcome of each by case id."""
    workdir = tmp_path_factory.mktemp("config-mistakes")
    suffix = uuid.uuid4().hex[:8]
    base = config_module.load(None, environ={})
    base = replace(
        base,
        redis=replace(base.redis, servers=(f"redis://127.0.0.1:{redis_server.port}/0",)),
        kafka=replace(base.kafka, bootstrap_servers=kafka_server.bootstrap, topic=f"mistakes.events.{suffix}",
                      dead_letter_topic=f"mistakes.dlq.{suffix}", state_topic=f"mistakes.state.{suffix}",
                      partitions=2),
        kask=replace(base.kask, url=kask_server.url),
        replicator=replace(base.replicator, group_id=f"mistakes-{suffix}", metrics_port=0),
        capture=replace(base.capture, metrics_port=0),
        backfill=replace(base.backfill, checkpoint_file=str(workdir / "backfill.checkpoint.json")),
    )
    create_topics(base, admin_client(base))

    silent = SilentServer()
    password_redis = start_redis(workdir / "password-redis", password=REDIS_PASSWORD)
    quiet_redis = start_redis(workdir / "quiet-redis", notify_keyspace_events="")
    servers = {"closed_port": free_port(), "silent": silent, "password_redis": password_redis,
               "quiet_redis": quiet_redis}

    try:
        with ThreadPoolExecutor(max_workers=PARALLEL_CASES) as pool:
            futures = {case.id: pool.submit(run_case, case, workdir / case.id, base, servers) for case in CASES}
            results = {case_id: future.result() for case_id, future in futures.items()}
    finally:
        silent.close()
        password_redis.stop()
        quiet_redis.stop()

    # Shown with `pytest -s`: the exit status and the time to fail of every case.
    for case_id, outcome in results.items():
        print(f"config mistake {case_id}: exit {outcome.status} after {outcome.duration_s:.1f} s, "
              f"{len(outcome.output.splitlines())} lines")
    return results


def error_lines(case: Case, output: str) -> list[str]:
    """Lines logged at ERROR, plus the line `echoseen` prints when the configuration does not load."""
    return [line for line in output.splitlines()
            if " ERROR " in line or line.startswith(f"echoseen {case.command}: ")]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_mistake_fails_clearly(outcomes, case):
    outcome = outcomes[case.id]
    report = f"{case.id}: exit {outcome.status} after {outcome.duration_s:.1f} s\n{outcome.output[-4000:]}"

    assert not outcome.hung, "did not exit within MAX_FAIL_S: " + report
    assert outcome.status == case.status, report
    assert "Traceback" not in outcome.output, report
    errors = error_lines(case, outcome.output)
    assert len(errors) == 1, report
    for text in case.mentions:
        assert text in errors[0], report
    assert len(outcome.output.splitlines()) <= MAX_OUTPUT_LINES, report


def test_replicator_waits_for_unreachable_kask(make_config, kafka_server, tmp_path):
    """Kask unreachable at startup is treated like a Kask outage: the replicator runs, not ready, and logs why."""
    kask_url = f"http://127.0.0.1:{free_port()}/echoseen/v1/"
    config = make_config(kafka_server=kafka_server, kask={"url": kask_url}, replicator={"metrics_port": 0})
    create_topics(config, admin_client(config))
    daemon = Daemon(tmp_path / "replicator", "replicate", config).start()
    try:
        def not_ready() -> str | None:
            try:
                status, body = daemon.probe("/readyz")
            except OSError:
                return None
            return body.get("detail") if status == 503 else None

        detail = wait_for(not_ready, 60, "/readyz to report the replicator not ready")
        assert "Kask has not responded" in detail
        # Long enough for the periodic /healthz probes; their warnings are limited to one per 10 s.
        time.sleep(15)
        assert daemon.process.poll() is None
        lines = daemon.log().splitlines()
        warnings = [line for line in lines if " WARNING " in line and "[kask] url" in line]
        assert warnings and kask_url in warnings[0]
        assert not [line for line in lines if " ERROR " in line]
        assert len(lines) <= MAX_OUTPUT_LINES, "\n".join(lines)
        assert daemon.stop() == 0
    finally:
        daemon.ensure_stopped()
