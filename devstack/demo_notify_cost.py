"""Measure what Redis keyspace notifications cost: redis-benchmark SET and SETEX with and without them.

    python -m devstack.demo_notify_cost [--requests 200000] [--clients 50] [--rounds 3] [--pipeline 1] [--json]

Starts its own redis-server on a free loopback port and, for each
notify-keyspace-events setting ("", "Kg$xe" as the capture needs, "KEA" for
everything), runs redis-benchmark SET and SETEX with no subscriber and with
one `redis-cli PSUBSCRIBE '__key*__:*'` subscriber that receives every
notification. Besides throughput and latency it reports the CPU time the
redis-server process spent per request (from /proc, Linux only), which other
load on the machine disturbs far less than throughput. Rounds are
interleaved, so load from other processes spreads over every setting; the
median round is reported. The subscriber is the
upper bound: the capture's default keyspace mode subscribes only to the
watched keys' channels, so Redis builds every notification but sends only
those.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devstack.process import ManagedProcess, StackError
from devstack.redis_server import start_redis

FLAG_SETTINGS = ("", "Kg$xe", "KEA")
VALUE = 's:14:"20190523123456";'
COMMANDS = {
    "SET": ["-t", "set"],
    "SETEX": ["SETEX", "key:__rand_int__", "31536000", VALUE],
}


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time a process used so far (Linux /proc)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    # fields[11] and fields[12] are utime and stime (fields 14 and 15 of proc(5)), in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_benchmark(port: int, command: list[str], requests: int, clients: int, pipeline: int) -> dict[str, float]:
    benchmark = shutil.which("redis-benchmark")
    if benchmark is None:
        raise StackError("redis-benchmark not found; install it with: apt-get install -y redis-tools")
    argv = [benchmark, "-h", "127.0.0.1", "-p", str(port), "-n", str(requests), "-c", str(clients),
            "-r", "100000", "-P", str(pipeline), "--csv", *command]
    output = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout
    rows = list(csv.reader(io.StringIO(output)))
    header, values = rows[0], rows[-1]
    row = dict(zip(header, values))
    return {"rps": float(row["rps"]), "avg_ms": float(row["avg_latency_ms"]), "p50_ms": float(row["p50_latency_ms"]),
            "p99_ms": float(row["p99_latency_ms"])}


def measure(requests: int, clients: int, rounds: int, pipeline: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="echoseen-notify-cost-"))
    server = start_redis(workdir / "redis", notify_keyspace_events="")
    client = server.client()
    samples: dict[tuple[str, bool, str], list[dict[str, float]]] = {}
    try:
        for round_number in range(rounds):
            for flags in FLAG_SETTINGS:
                client.config_set("notify-keyspace-events", flags)
                for subscribed in (False, True):
                    subscriber = None
                    if subscribed:
                        subscriber = ManagedProcess(
                            name="notify-subscriber",
                            argv=["redis-cli", "-p", str(server.port), "--csv", "PSUBSCRIBE", "__key*__:*"],
                            log_path=Path(os.devnull)).start()
                        time.sleep(0.3)
                    try:
                        for name, command in COMMANDS.items():
                            client.flushall()
                            cpu_before_s = cpu_seconds(server.process.pid)
                            result = run_benchmark(server.port, command, requests, clients, pipeline)
                            cpu_s = cpu_seconds(server.process.pid) - cpu_before_s
                            result["server_cpu_us_per_request"] = cpu_s / requests * 1e6
                            samples.setdefault((flags, subscribed, name), []).append(result)
                    finally:
                        if subscriber is not None:
                            subscriber.stop(timeout_s=5)
            print(f"round {round_number + 1} of {rounds} done", file=sys.stderr)
    finally:
        client.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    results = []
    for (flags, subscribed, name), runs in samples.items():
        median = sorted(runs, key=lambda run: run["rps"])[len(runs) // 2]
        results.append({"flags": flags, "subscriber": subscribed, "command": name, **median,
                        "rps_all_rounds": [run["rps"] for run in runs],
                        "server_cpu_us_per_request": statistics.median(run["server_cpu_us_per_request"]
                                                                       for run in runs)})
    return {"requests": requests, "clients": clients, "rounds": rounds, "pipeline": pipeline,
            "load_average": os.getloadavg(), "cpus": os.cpu_count(), "results": results}


def render(document: dict) -> str:
    baseline = {row["command"]: row for row in document["results"] if row["flags"] == "" and not row["subscriber"]}
    lines = [f"redis-benchmark, {document['requests']} requests, {document['clients']} clients, "
             f"{document['pipeline']} request(s) per round trip, median of "
             f"{document['rounds']} rounds; {document['cpus']} CPUs, load average "
             f"{', '.join(f'{value:.1f}' for value in document['load_average'])}",
             "| command | notify-keyspace-events | subscriber | requests/s | vs. off | avg ms | p50 ms | p99 ms "
             "| server CPU µs/request | vs. off |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(document["results"], key=lambda row: (row["command"], FLAG_SETTINGS.index(row["flags"]),
                                                            row["subscriber"])):
        base = baseline[row["command"]]
        rps_change = row["rps"] / base["rps"] - 1
        cpu_change = row["server_cpu_us_per_request"] / base["server_cpu_us_per_request"] - 1
        lines.append(f"| {row['command']} | `\"{row['flags']}\"` | {'yes' if row['subscriber'] else 'no'} | "
                     f"{row['rps']:,.0f} | {rps_change:+.0%} | {row['avg_ms']:.3f} | {row['p50_ms']:.3f} | "
                     f"{row['p99_ms']:.3f} | {row['server_cpu_us_per_request']:.2f} | {cpu_change:+.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo_notify_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000, help="requests per benchmark run")
    parser.add_argument("--clients", type=int, default=50, help="parallel benchmark connections")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--pipeline", type=int, default=1,
                        help="requests each client sends per round trip (redis-benchmark -P)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    document = measure(args.requests, args.clients, args.rounds, args.pipeline)
    print(json.dumps(document, indent=2) if args.json else render(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
