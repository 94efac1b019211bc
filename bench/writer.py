"""Write Echo seen times to Redis at a steady rate, as MediaWiki does: SETEX key 31536000 <value>.

A helper process of the benchmarks, run by bench/common.py. Keys are
``<wiki>:echo:seen:<type>:time:<n>`` with ``n`` drawn uniformly from 1 to
--echo-keys, and, with --unrelated-share, unrelated MainStash keys
(``<wiki>:edit-stash:<n>``, also written with SETEX) for that share of the
writes. The value is the current second as PHP-serialized TS_MW.

Commands are encoded here and sent over a plain socket in one pipeline per
tick: at tick t the writer sends every write due by then (write i is due at
i / rate seconds), then reads the replies of that tick. --rate 0 writes as
fast as the server takes them, 1,000 commands per pipeline.

At exit (after --duration seconds or SIGTERM) it prints one JSON document:
the writes sent and acknowledged, the elapsed seconds and the rate.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import sys
import time
from urllib.parse import urlsplit

TTL_S = 31_536_000
TICK_S = 0.005
UNLIMITED_BATCH = 1000
OK_REPLY = b"+OK\r\n"


class Connection:
    """A socket to Redis that sends pipelines and counts +OK replies."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        db = int(parts.path.lstrip("/") or "0")
        if db:
            self.send_and_wait(b"*2\r\n$6\r\nSELECT\r\n$%d\r\n%d\r\n" % (len(str(db)), db), 1)

    def send_and_wait(self, payload: bytes, replies: int) -> None:
        """Send a pipeline and read until ``replies`` +OK replies arrived; raise on any other reply."""
        self.sock.sendall(payload)
        received = 0
        while received < replies:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            data = self._buffer + chunk
            complete = len(data) - len(data) % len(OK_REPLY)
            count = data.count(OK_REPLY, 0, complete)
            if count * len(OK_REPLY) != complete:
                raise RuntimeError(f"Redis replied with something other than +OK: {data[:200]!r}")
            received += count
            self._buffer = data[complete:]


def seen_value(epoch_s: int) -> bytes:
    ts = time.strftime("%Y%m%d%H%M%S", time.gmtime(epoch_s))
    return b's:14:"%s";' % ts.encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", required=True, help="Redis URL, redis://host:port/db")
    parser.add_argument("--rate", type=float, required=True, help="writes per second; 0 for no limit")
    parser.add_argument("--duration", type=float, required=True, help="seconds to write")
    parser.add_argument("--echo-keys", type=int, default=1_000_000, help="Echo user ids to pick from per type")
    parser.add_argument("--unrelated-share", type=float, default=0.0,
                        help="share of writes that go to unrelated keys, 0 to 1")
    parser.add_argument("--wiki", default="benchwiki", help="wiki db name in the keys")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    args = parser.parse_args(argv)

    stop = {"requested": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    connection = Connection(args.url)
    rng = random.Random(args.seed)
    wiki = args.wiki.encode()
    alert_prefix = wiki + b":echo:seen:alert:time:"
    message_prefix = wiki + b":echo:seen:message:time:"
    unrelated_prefix = wiki + b":edit-stash:"
    ttl = str(TTL_S).encode()
    command_head = b"*4\r\n$5\r\nSETEX\r\n"
    ttl_part = b"$%d\r\n%b\r\n" % (len(ttl), ttl)
    randrange, random_share = rng.randrange, rng.random

    def commands(count: int, value_part: bytes) -> tuple[bytes, int]:
        parts = []
        echo = 0
        for _ in range(count):
            if args.unrelated_share and random_share() < args.unrelated_share:
                key = unrelated_prefix + str(randrange(1, 10_000_000)).encode()
            else:
                echo += 1
                prefix = alert_prefix if random_share() < 0.75 else message_prefix
                key = prefix + str(randrange(1, args.echo_keys + 1)).encode()
            parts.append(command_head + b"$%d\r\n%b\r\n" % (len(key), key) + ttl_part + value_part)
        return b"".join(parts), echo

    written = echo_written = 0
    value_second = -1
    value_part = b""
    started = time.monotonic()
    deadline = started + args.duration
    tick = 0
    while not stop["requested"]:
        now = time.monotonic()
        if now >= deadline:
            break
        if args.rate > 0:
            due = int((now - started) * args.rate) + 1
            count = due - written
        else:
            count = UNLIMITED_BATCH
        if count > 0:
            second = int(time.time())
            if second != value_second:
                value_second = second
                value = seen_value(second)
                value_part = b"$%d\r\n%b\r\n" % (len(value), value)
            payload, echo = commands(count, value_part)
            connection.send_and_wait(payload, count)
            written += count
            echo_written += echo
        if args.rate > 0:
            tick += 1
            delay_s = started + tick * TICK_S - time.monotonic()
            if delay_s > 0:
                time.sleep(delay_s)
            elif delay_s < -1.0:
                # Far behind schedule: skip the missed ticks instead of sleeping never again.
                tick = int((time.monotonic() - started) / TICK_S)
    elapsed_s = time.monotonic() - started

    result = {"writes": written, "echo_writes": echo_written, "unrelated_writes": written - echo_written,
              "elapsed_s": round(elapsed_s, 3), "rate_per_s": round(written / elapsed_s, 1) if elapsed_s else 0.0,
              "target_rate_per_s": args.rate}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
