"""The whole local stack in one work folder: Redis, Kafka, Cassandra with Kask's schema, and Kask.

The demo (``python -m devstack.demo``) and ``echoseen-devstack up`` start it
the same way. Layout of the work folder:

    redis/ kafka/ cassandra/ kask/   each service's data, configuration and logs
    logs/                           logs of the echoseen commands the demo runs
    echoseen.toml                   an echoseen configuration that points at the stack
    stack.json                      pids, ports and URLs (written by `echoseen-devstack up`)

Every service listens on 127.0.0.1 on a free port. Redis runs with
notify-keyspace-events "Kg$xe", the flags the capture needs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from devstack.cassandra import CassandraServer, create_kask_schema, start_cassandra
from devstack.kafka import KafkaServer, start_kafka
from devstack.kask import KaskServer, start_kask
from devstack.process import ManagedProcess, StackError, free_port
from devstack.redis_server import DEFAULT_NOTIFY_KEYSPACE_EVENTS, RedisServer, start_redis
from echoseen import config as config_module

log = logging.getLogger(__name__)

CONFIG_FILE = "echoseen.toml"
STACK_FILE = "stack.json"
# Written into every work folder this module creates, so a later wipe can tell it is ours.
MARKER_FILE = ".echoseen-devstack"
STOP_TIMEOUT_S = 60.0


@dataclass
class Stack:
    """Handles of the running services and how long each took to start."""

    workdir: Path
    redis: RedisServer
    kafka: KafkaServer
    cassandra: CassandraServer
    kask: KaskServer
    startup_s: dict[str, float] = field(default_factory=dict)

    def processes(self) -> dict[str, ManagedProcess]:
        """Return the managed process of each service, in start order."""
        return {
            "redis": self.redis.process,
            "kafka": self.kafka.process,
            "cassandra": self.cassandra.process,
            "kask": self.kask.process,
        }

    def stop(self) -> None:
        """Stop the services, the dependent ones first."""
        for name, process in reversed(list(self.processes().items())):
            try:
                process.stop(timeout_s=STOP_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - keep stopping the others
                log.exception("failed to stop %s", name)

    def log_files(self) -> dict[str, Path]:
        return {
            "redis": self.redis.log_path,
            "kafka": self.kafka.server_log_path,
            "cassandra": self.cassandra.system_log,
            "kask": self.kask.process.log_path,
        }


def prepare_workdir(workdir: Path, wipe: bool) -> Path:
    """Create the work folder; with ``wipe``, empty it first.

    Refuses to wipe a non-empty folder that this module did not create, and a
    folder whose stack.json names a service that still runs.
    """
    import shutil

    workdir = workdir.resolve()
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER_FILE).exists():
            raise StackError(f"{workdir} is not empty and was not created by echoseen-devstack; "
                             "choose another folder with --dir")
        running = running_services(workdir)
        if running:
            raise StackError(f"{workdir} contains a stack that is still running ({', '.join(running)}); stop it with "
                             f"`echoseen-devstack down --dir {workdir}` or choose another folder with --dir")
        if wipe:
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER_FILE).write_text("created by echoseen-devstack; safe to delete when nothing runs\n")
    return workdir


def start_stack(workdir: Path) -> Stack:
    """Start Redis, Kafka, Cassandra (with Kask's schema) and Kask in ``workdir``.

    Kafka starts in a thread while Cassandra starts, because the two JVMs take
    the longest. When any service fails, the ones already started are stopped
    and the StackError is raised.
    """
    startup_s: dict[str, float] = {}
    started: list[Any] = []
    kafka_result: dict[str, Any] = {}

    def start_kafka_in_thread() -> None:
        began = time.monotonic()
        try:
            kafka_result["server"] = start_kafka(workdir / "kafka")
            kafka_result["seconds"] = time.monotonic() - began
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread below
            kafka_result["error"] = exc

    kafka_thread = threading.Thread(target=start_kafka_in_thread, name="start-kafka", daemon=True)
    try:
        began = time.monotonic()
        redis_server = start_redis(workdir / "redis", notify_keyspace_events=DEFAULT_NOTIFY_KEYSPACE_EVENTS)
        startup_s["redis"] = time.monotonic() - began
        started.append(redis_server)

        kafka_thread.start()
        began = time.monotonic()
        cassandra = start_cassandra(workdir / "cassandra")
        started.append(cassandra)
        create_kask_schema(cassandra)
        startup_s["cassandra"] = time.monotonic() - began

        kafka_thread.join()
        if "error" in kafka_result:
            raise kafka_result["error"]
        kafka = kafka_result["server"]
        started.append(kafka)
        startup_s["kafka"] = kafka_result["seconds"]

        began = time.monotonic()
        kask = start_kask(workdir / "kask", cassandra, create_schema=False)
        started.append(kask)
        startup_s["kask"] = time.monotonic() - began
    except BaseException:
        if kafka_thread.is_alive():
            kafka_thread.join()
        if "server" in kafka_result and kafka_result["server"] not in started:
            started.append(kafka_result["server"])
        for server in reversed(started):
            try:
                server.stop()
            except Exception:  # noqa: BLE001 - the original error matters more
                log.exception("failed to stop %s after a failed start", type(server).__name__)
        raise
    return Stack(workdir, redis_server, kafka, cassandra, kask, startup_s)


def stack_config(stack: Stack, *, capture_metrics_port: int | None = None,
                 replicator_metrics_port: int | None = None) -> config_module.Config:
    """Return an echoseen configuration for the stack: defaults plus its addresses and free metrics ports."""
    base = config_module.load(None, environ={})
    config = replace(
        base,
        redis=replace(base.redis, servers=(f"redis://{stack.redis.host}:{stack.redis.port}/0",)),
        kafka=replace(base.kafka, bootstrap_servers=stack.kafka.bootstrap),
        kask=replace(base.kask, url=stack.kask.url),
        capture=replace(base.capture, metrics_port=capture_metrics_port or free_port()),
        replicator=replace(base.replicator, metrics_port=replicator_metrics_port or free_port()),
        backfill=replace(base.backfill,
                         checkpoint_file=str(stack.workdir / "backfill.checkpoint.json")),
    )
    config_module.validate(config)
    return config


def write_config(stack: Stack, config: config_module.Config) -> Path:
    path = stack.workdir / CONFIG_FILE
    header = (f"# echoseen configuration for the local stack in {stack.workdir}, written by echoseen-devstack.\n"
              "# Every setting not shown in the docs' reference keeps its default.\n\n")
    path.write_text(header + config_module.to_toml(config))
    return path


# ---------------------------------------------------------------------------
# stack.json: what `up` started, so `down` and `status` can find it later
# ---------------------------------------------------------------------------

def process_start_ticks(pid: int) -> int | None:
    """Return the start time of a process in clock ticks since boot (Linux /proc), None when it is gone.

    A zombie (exited, not yet reaped by its parent) counts as gone. The value
    is stored next to each pid, so `down` never signals a later process that
    reused the pid.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces, so fields are counted after it:
    # fields[0] is the state (field 3) and fields[19] the start time (field 22).
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def stack_document(stack: Stack, config: config_module.Config, config_path: Path) -> dict[str, Any]:
    processes = {}
    for name, managed in stack.processes().items():
        processes[name] = {"pid": managed.pid, "start_ticks": process_start_ticks(managed.pid),
                           "log": str(managed.log_path)}
    processes["redis"].update(port=stack.redis.port, url=stack.redis.url)
    processes["kafka"].update(port=stack.kafka.ports.broker, controller_port=stack.kafka.ports.controller,
                              bootstrap=stack.kafka.bootstrap, server_log=str(stack.kafka.server_log_path))
    processes["cassandra"].update(native_port=stack.cassandra.native_port, storage_port=stack.cassandra.storage_port,
                                  jmx_port=stack.cassandra.jmx_port, system_log=str(stack.cassandra.system_log))
    processes["kask"].update(port=stack.kask.port, url=stack.kask.url, implementation=stack.kask.implementation,
                             version=stack.kask.version)
    return {
        "workdir": str(stack.workdir),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": str(config_path),
        "capture_metrics_url": f"http://{config.metrics.listen_address}:{config.capture.metrics_port}/metrics",
        "replicator_metrics_url": f"http://{config.metrics.listen_address}:{config.replicator.metrics_port}/metrics",
        "startup_s": {name: round(seconds, 1) for name, seconds in stack.startup_s.items()},
        "processes": processes,
    }


def write_stack_file(workdir: Path, document: dict[str, Any]) -> Path:
    path = workdir / STACK_FILE
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def read_stack_file(workdir: Path) -> dict[str, Any]:
    path = workdir / STACK_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StackError(f"no {STACK_FILE} in {workdir}; start a stack with `echoseen-devstack up --dir "
                         f"{workdir}`") from None
    except ValueError as exc:
        raise StackError(f"{path} is not valid JSON ({exc}); stop the processes it names by hand") from exc


def is_same_process(entry: dict[str, Any]) -> bool:
    """Tell whether the pid of a stack.json entry still belongs to the process that was recorded."""
    pid = entry.get("pid")
    if not isinstance(pid, int):
        return False
    ticks = process_start_ticks(pid)
    return ticks is not None and ticks == entry.get("start_ticks")


def running_services(workdir: Path) -> list[str]:
    """Return the names of the services in workdir/stack.json that still run; [] without the file."""
    if not (workdir / STACK_FILE).exists():
        return []
    try:
        document = read_stack_file(workdir)
    except StackError:
        return []
    return [name for name, entry in document.get("processes", {}).items() if is_same_process(entry)]


def detach(stack: Stack) -> None:
    """Take the stack's processes off the list devstack.process stops at interpreter exit.

    `echoseen-devstack up` leaves the services running after it exits, so
    their handles must not be stopped by that atexit hook.
    """
    for managed in stack.processes().values():
        managed.detach()


def stop_recorded(document: dict[str, Any], timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
    """Stop the services named in a stack.json document by pid, dependent ones first; return what was done.

    Each service runs in its own process group (its pid is the group id), so
    the whole group gets SIGTERM, then SIGKILL after ``timeout_s``. A pid
    whose start time differs from the recorded one belongs to another
    process by now and is left alone.
    """
    done = []
    for name, entry in reversed(list(document.get("processes", {}).items())):
        pid = entry.get("pid")
        if not is_same_process(entry):
            done.append(f"{name}: not running (pid {pid})")
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            done.append(f"{name}: exited before SIGTERM (pid {pid})")
            continue
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and is_same_process(entry):
            time.sleep(0.2)
        if is_same_process(entry):
            log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", name, pid, timeout_s)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            done.append(f"{name}: killed (pid {pid})")
        else:
            done.append(f"{name}: stopped (pid {pid})")
        # Children left in the group after the leader exited.
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return done
