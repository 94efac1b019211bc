#!/usr/bin/env bash
# Set up a new machine and run the migration end to end on local services:
# scripts/install.sh (Redis, the virtual environment, the Kafka and Cassandra jars, the Kask
# stand-in), then `python -m devstack.demo`, which starts Redis, Kafka, Cassandra and Kask in
# .stack/demo, loads a generated Echo keyspace, runs the capture, the replicator, the backfill
# under live writes and verify, prints a report and stops everything it started.
# Arguments go to the demo, e.g. `bash scripts/demo.sh --keys 20000 --write-rate 100`;
# `bash scripts/demo.sh --help` lists them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m devstack.demo "$@"
