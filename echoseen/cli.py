"""The ``echoseen`` console command: one entry point, one subcommand per job.

Each subcommand lives in its own module, which provides ``add_arguments(parser)``
and ``run(args, config) -> int``; the module docstring is the subcommand's
``--help`` description. Only the module of the subcommand being run is
imported. Exit statuses are defined in :mod:`echoseen.errors`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from dataclasses import dataclass

from echoseen import __version__, config as config_module, logs, malloc
from echoseen.errors import EXIT_CONFIG, EXIT_INTERRUPTED, EchoseenError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subcommand:
    name: str
    module: str
    summary: str


SUBCOMMANDS = (
    Subcommand("capture", "capture.daemon", "run the capture daemon: Redis keyspace notifications to Kafka"),
    Subcommand("replicate", "replicator.daemon", "run the replicator daemon: Kafka events to Kask"),
    Subcommand("backfill", "capture.backfill", "snapshot existing keys into the topic, or report their ages"),
    Subcommand("lag", "operations.lag", "show the replicator group's lag per partition"),
    Subcommand("replay", "operations.replay", "move the replicator group's offsets to reprocess records"),
    Subcommand("verify", "operations.verify", "compare Redis and Kask key by key"),
    Subcommand("status", "operations.status", "one screen of capture, replicator and verify health"),
    Subcommand("topics", "operations.topics", "create or check the Kafka topics"),
    Subcommand("dead-letters", "replicator.dead_letters", "list dead-lettered records or re-drive them"),
    Subcommand("check-config", "echoseen.cli", "validate a configuration file and print it with secrets masked"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the effective configuration as JSON")


def run(args: argparse.Namespace, config: config_module.Config) -> int:
    """Print the effective configuration; loading it already validated every value."""
    masked = config.masked()
    if args.json:
        print(json.dumps(masked, indent=2, sort_keys=True))
        return 0
    print(f"# effective configuration from {config.source_path or '(no file: defaults and environment)'}")
    print(config_module.to_toml(config, masked=True))
    for name, reader in (("redis password", config.redis_password), ("Kafka SASL password", config.kafka_sasl_password),
                         ("Kask HMAC key", config.kask_hmac_key)):
        print(f"# {name}: {'set' if reader() else 'not set'}")
    return 0


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE",
                        help="TOML configuration file (default: $ECHOSEEN_CONFIG, else built-in defaults; "
                             "ECHOSEEN_<SECTION>_<SETTING> variables override it)")
    common.add_argument("--log-level", help="override [logging] level: DEBUG, INFO, WARNING or ERROR")
    common.add_argument("--version", action="version", version=f"echoseen {__version__}")
    return common


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; the options of ``selected`` (a subcommand name) are added by importing its module."""
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="echoseen",
        description="Move Echo seen times from Redis to Kask through Kafka, and operate the migration.",
        parents=[common])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for subcommand in SUBCOMMANDS:
        description = subcommand.summary
        module = None
        if subcommand.name == selected:
            module = importlib.import_module(subcommand.module)
            description = (module.__doc__ or subcommand.summary).strip()
        subparser = subparsers.add_parser(subcommand.name, parents=[common], help=subcommand.summary,
                                          description=description,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
        if module is not None:
            module.add_arguments(subparser)
        subparser.set_defaults(module=subcommand.module)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before any Kafka client starts its threads, which is when glibc creates the arenas.
    malloc.limit_arenas()
    argv = sys.argv[1:] if argv is None else argv
    names = {subcommand.name for subcommand in SUBCOMMANDS}
    selected = next((token for token in argv if token in names), None)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if not getattr(args, "module", None):
        parser.print_help()
        return EXIT_CONFIG

    try:
        config = config_module.load(args.config)
    except EchoseenError as exc:
        print(f"echoseen {args.command}: {exc}", file=sys.stderr)
        return exc.exit_status
    logs.setup(args.log_level or config.logging.level, config.logging.format)

    module = importlib.import_module(args.module)
    try:
        return module.run(args, config)
    except EchoseenError as exc:
        log.error("%s", exc)
        return exc.exit_status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
