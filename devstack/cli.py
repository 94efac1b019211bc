"""``echoseen-devstack``: fetch and build the local stack's services.

``fetch`` downloads the Kafka and Cassandra jars from Maven Central and builds
the Kask stand-in, all into the cache folder (~/.cache/echoseen, or
$ECHOSEEN_CACHE_DIR), so tests and the demo start without downloading.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from devstack.process import StackError, cache_dir

log = logging.getLogger(__name__)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="echoseen-devstack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers.add_parser("fetch", help="download the jars and build the Kask stand-in into the cache folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "fetch":
            return fetch()
    except StackError as exc:
        print(f"echoseen-devstack {args.command}: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
