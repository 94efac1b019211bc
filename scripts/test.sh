#!/usr/bin/env bash
# Install what the tests need, then run every test: unit tests, the Kask contract suite and
# the suites that start real Redis, Kafka, Cassandra and Kask on 127.0.0.1 and free ports.
# Arguments are passed to pytest, e.g. `scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
cache="${ECHOSEEN_CACHE_DIR:-$HOME/.cache/echoseen}"
(cd devstack/kask_standin && GOPATH="$cache/go" GOMODCACHE="$cache/go/pkg/mod" GOCACHE="$cache/go/build-cache" \
  GOFLAGS=-mod=mod GOTOOLCHAIN=local go test ./... >/dev/null)
echo "test.sh: Go tests of the Kask stand-in passed"
exec .venv/bin/python -m pytest -p no:cacheprovider --durations=15 "$@"
