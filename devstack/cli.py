"""``echoseen-devstack``: fetch, start and stop the local stack.

  fetch    download the Kafka and Cassandra jars from Maven Central and build
           the Kask stand-in into the cache folder (~/.cache/echoseen, or
           $ECHOSEEN_CACHE_DIR), so tests and the demo start without downloading
  up       start Redis, Kafka, Cassandra and Kask in a work folder and leave
           them running; writes DIR/stack.json (pids, ports, URLs) and
           DIR/echoseen.toml (a configuration that points at the stack)
  status   show what DIR/stack.json names and whether each process still runs
  down     stop the processes DIR/stack.json names, by pid

Every service listens on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from devstack.process import StackError, cache_dir, port_is_open

log = logging.getLogger(__name__)

DEFAULT_DIR = Path(".stack/dev")


def fetch() -> int:
    from devstack.cassandra import ensure_cassandra_jars
    from devstack.kafka import ensure_kafka_jars
    from devstack.kask import build_kask_standin

    started = time.monotonic()
    ensure_kafka_jars()
    ensure_cassandra_jars()
    binary = build_kask_standin()
    size_mb = sum(path.stat().st_size for path in cache_dir().rglob("*") if path.is_file()) / 1e6
    print(f"echoseen-devstack: Kafka and Cassandra jars and the Kask stand-in ({binary}) are ready in "
          f"{cache_dir()} ({size_mb:.0f} MB) after {time.monotonic() - started:.1f} s")
    return 0


def up(workdir: Path) -> int:
    from devstack import demo_stack

    started = time.monotonic()
    workdir = demo_stack.prepare_workdir(workdir, wipe=True)
    stack = demo_stack.start_stack(workdir)
    try:
        config = demo_stack.stack_config(stack)
        config_path = demo_stack.write_config(stack, config)
        document = demo_stack.stack_document(stack, config, config_path)
        stack_path = demo_stack.write_stack_file(workdir, document)
    except BaseException:
        stack.stop()
        raise
    # From here on the services outlive this command; only `down` stops them.
    demo_stack.detach(stack)

    print(f"echoseen-devstack: stack running in {workdir} after {time.monotonic() - started:.1f} s")
    print(render_status(document))
    print(f"\nrecorded in {stack_path}; configuration for echoseen: {config_path}")
    print("next steps:")
    print(f"  echoseen topics --create -c {config_path}")
    print(f"  echoseen capture -c {config_path}      # and, in another terminal:")
    print(f"  echoseen replicate -c {config_path}")
    print(f"  echoseen-devstack down --dir {workdir}")
    return 0


def render_status(document: dict) -> str:
    from devstack.demo_stack import is_same_process

    lines = [f"{'SERVICE':<10} {'PID':>7}  {'STATE':<8} ADDRESS"]
    for name, entry in document.get("processes", {}).items():
        state = "running" if is_same_process(entry) else "stopped"
        address = entry.get("url") or entry.get("bootstrap") or ""
        if name == "cassandra":
            address = f"127.0.0.1:{entry.get('native_port')} (CQL)"
        port = entry.get("port") or entry.get("native_port")
        if state == "running" and port and not port_is_open(port):
            state = "no-port"
        lines.append(f"{name:<10} {entry.get('pid', '-'):>7}  {state:<8} {address}")
    lines.append("logs:")
    for name, entry in document.get("processes", {}).items():
        lines.append(f"  {name:<10} {entry.get('server_log') or entry.get('system_log') or entry['log']}")
    lines.append(f"capture metrics (when started with this configuration): {document.get('capture_metrics_url')}")
    lines.append(f"replicator metrics: {document.get('replicator_metrics_url')}")
    return "\n".join(lines)


def status(workdir: Path) -> int:
    from devstack.demo_stack import is_same_process, read_stack_file

    document = read_stack_file(workdir.resolve())
    print(f"stack in {document.get('workdir')}, started {document.get('started_at')}, "
          f"configuration {document.get('config')}")
    print(render_status(document))
    entries = document.get("processes", {}).values()
    # Exit status 1 when any service is gone, so scripts can check the stack.
    return 0 if all(is_same_process(entry) for entry in entries) else 1


def down(workdir: Path) -> int:
    from devstack.demo_stack import STACK_FILE, read_stack_file, stop_recorded

    workdir = workdir.resolve()
    document = read_stack_file(workdir)
    for line in stop_recorded(document):
        print(f"echoseen-devstack down: {line}")
    (workdir / STACK_FILE).rename(workdir / f"{STACK_FILE}.stopped")
    print(f"echoseen-devstack down: data and logs stay in {workdir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="echoseen-devstack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers.add_parser("fetch", help="download the jars and build the Kask stand-in into the cache folder")
    for name, summary in (("up", "start the stack and leave it running (the folder is emptied first)"),
                          ("status", "show the processes of a stack started with up"),
                          ("down", "stop the processes of a stack started with up")):
        subparser = subparsers.add_parser(name, help=summary)
        subparser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                               help="work folder of the stack (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "fetch":
            return fetch()
        if args.command == "up":
            return up(args.dir)
        if args.command == "status":
            return status(args.dir)
        if args.command == "down":
            return down(args.dir)
    except StackError as exc:
        print(f"echoseen-devstack {args.command}: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
