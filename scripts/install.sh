#!/usr/bin/env bash
# Install everything the tests, the demo and the benchmarks need on a new machine:
# Debian's redis-server, a Python virtual environment with the project, the Kafka and
# Cassandra jars from Maven Central, and the Kask stand-in built with Go.
# Everything downloaded lands in ~/.cache/echoseen (or $ECHOSEEN_CACHE_DIR), so a second
# run fetches nothing. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "install.sh: $1 is missing; $2" >&2; exit 1; }
}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "install.sh: installing Debian's redis-server"
  if [ "$(id -u)" -eq 0 ]; then
    apt-get install -y redis-server >/dev/null || { apt-get update >/dev/null && apt-get install -y redis-server >/dev/null; }
  else
    sudo apt-get install -y redis-server >/dev/null
  fi
fi
# Only the binary is used; the packaged service would hold port 6379 for nothing.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
  systemctl stop redis-server || true
fi

need java "install OpenJDK 17 (apt-get install openjdk-17-jre-headless)"
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
if [ "${java_major:-0}" -lt 17 ]; then
  echo "install.sh: java on PATH is version ${java_major:-unknown}; Kafka 4 and Cassandra 5 need Java 17" >&2
  exit 1
fi
need mvn "install Maven (apt-get install maven); it fetches the Kafka and Cassandra jars"
need go "install Go 1.21 or newer; it builds the Kask stand-in"
need python3.11 "install Python 3.11" 2>/dev/null || need python3 "install Python 3.11"

python=$(command -v python3.11 || command -v python3)
if [ ! -x .venv/bin/python ]; then
  echo "install.sh: creating the virtual environment .venv"
  "$python" -m venv .venv
fi
# The Cassandra driver (used only to create Kask's schema) needs no C extensions.
CASS_DRIVER_NO_EXTENSIONS=1 CASS_DRIVER_NO_CYTHON=1 .venv/bin/pip install --quiet -e '.[test,bench]'

.venv/bin/echoseen-devstack fetch
