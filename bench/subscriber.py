"""A plain redis-py subscriber that only counts messages: the baseline the capture's subscription is compared with.

A helper process of the benchmarks, run by bench/common.py. It subscribes
the way the capture does in the chosen channel mode (keyspace: PSUBSCRIBE to
the keyspace channels of the Echo key patterns; keyevent: SUBSCRIBE to the
keyevent channels of the events the capture listens to), over RESP2 with
redis-py's hiredis parser, and calls ``get_message()`` in a loop, doing
nothing with a message but counting it.

It writes --ready-file once every subscription is confirmed, and exits after
--expect messages, after --idle-exit seconds without a message (once the
first one arrived), or on SIGTERM. At exit it prints one JSON document: the
messages counted and the seconds from the first to the last message.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import redis

from capture.patterns import KEYEVENT_EVENTS, keyevent_channel, keyspace_channel_pattern
from echoseen.config import ECHO_KEY_PATTERNS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", required=True, help="Redis URL, redis://host:port/db")
    parser.add_argument("--mode", choices=("keyspace", "keyevent"), default="keyspace")
    parser.add_argument("--ready-file", required=True, help="file written once the subscription is confirmed")
    parser.add_argument("--expect", type=int, default=0, help="exit after this many messages; 0 for no limit")
    parser.add_argument("--idle-exit", type=float, default=5.0,
                        help="exit after this many seconds without a message, once one arrived")
    args = parser.parse_args(argv)

    stop = {"requested": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)

    client = redis.Redis.from_url(args.url, protocol=2)
    db = client.connection_pool.connection_kwargs.get("db", 0) or 0
    pubsub = client.pubsub()
    if args.mode == "keyspace":
        channels = [keyspace_channel_pattern(db, pattern) for pattern in ECHO_KEY_PATTERNS]
        pubsub.psubscribe(*channels)
    else:
        channels = [keyevent_channel(db, event) for event in KEYEVENT_EVENTS]
        pubsub.subscribe(*channels)
    confirmed = 0
    while confirmed < len(channels):
        message = pubsub.get_message(timeout=5.0)
        if message is not None and message["type"] in ("subscribe", "psubscribe"):
            confirmed += 1
    Path(args.ready_file).write_text("ready\n")

    count = 0
    first = last = None
    get_message = pubsub.get_message
    while not stop["requested"]:
        message = get_message(timeout=0.5)
        if message is None:
            if last is not None and time.monotonic() - last >= args.idle_exit:
                break
            continue
        count += 1
        last = time.monotonic()
        if first is None:
            first = last
        if args.expect and count >= args.expect:
            break
    pubsub.close()

    span_s = (last - first) if first is not None and last is not None else 0.0
    result = {"mode": args.mode, "messages": count, "span_s": round(span_s, 3),
              "messages_per_s": round(count / span_s, 1) if span_s > 0 else None}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
