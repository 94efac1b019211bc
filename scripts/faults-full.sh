#!/usr/bin/env bash
# The fault suite at full size: the Kafka broker down for 30 s, Kask down for 60 s, longer loads and
# higher write rates than the short form that runs with every other test. Each setting can be overridden
# from the environment. Arguments are passed to pytest after tests/faults, so select tests with -k, e.g.
# `scripts/faults-full.sh -k kafka`: a path would be collected in addition to tests/faults.
set -euo pipefail
cd "$(dirname "$0")/.."

export ECHOSEEN_FAULT_RATE_PER_S="${ECHOSEEN_FAULT_RATE_PER_S:-300}"
export ECHOSEEN_FAULT_KEYS="${ECHOSEEN_FAULT_KEYS:-5000}"
export ECHOSEEN_FAULT_LOAD_S="${ECHOSEEN_FAULT_LOAD_S:-10}"
export ECHOSEEN_FAULT_DOWN_S="${ECHOSEEN_FAULT_DOWN_S:-10}"
export ECHOSEEN_FAULT_KAFKA_DOWN_S="${ECHOSEEN_FAULT_KAFKA_DOWN_S:-30}"
export ECHOSEEN_FAULT_KASK_DOWN_S="${ECHOSEEN_FAULT_KASK_DOWN_S:-60}"
export ECHOSEEN_FAULT_KASK_SLOW_S="${ECHOSEEN_FAULT_KASK_SLOW_S:-20}"
export ECHOSEEN_FAULT_BURST_WRITES="${ECHOSEEN_FAULT_BURST_WRITES:-200000}"
export ECHOSEEN_FAULT_SETTLE_S="${ECHOSEEN_FAULT_SETTLE_S:-600}"

exec .venv/bin/python -m pytest -p no:cacheprovider --durations=0 -rA tests/faults "$@"
