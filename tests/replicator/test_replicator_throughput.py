"""Apply rate of the replicator with default settings, next to what Kask alone sustains on this machine.

ECHOSEEN_TEST_THROUGHPUT_RECORDS sets the record count (default 2000; the
figure in docs/replicator.md used 20000). The test prints both rates and checks
only that every record arrived: it makes no timing assertion.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from replicator_harness import echo_key, load_events, missing_or_wrong, newest_seen, running

from echoseen.kask_body import BodyCodec
from replicator.kask_client import KaskClient

pytestmark = [pytest.mark.stack, pytest.mark.slow]

THROUGHPUT_RECORDS = int(os.environ.get("ECHOSEEN_TEST_THROUGHPUT_RECORDS", "2000"))


def kask_alone_rate(config, wiki: str, records: int, concurrency: int) -> float:
    """GET then POST per key, ``concurrency`` at a time, straight from the client: records per second."""
    body = BodyCodec().encode("20240601000000")

    async def run() -> float:
        async with KaskClient(config.kask, max_in_flight=concurrency) as client:
            slots = asyncio.Semaphore(concurrency)

            async def one(index: int) -> None:
                async with slots:
                    key = echo_key(wiki + "raw", index)
                    await client.get(key)
                    await client.post(key, body)

            started = time.monotonic()
            await asyncio.gather(*(one(index) for index in range(records)))
            return records / (time.monotonic() - started)

    return asyncio.run(run())


def test_apply_rate(rep_config, producer, unique_wiki, record_property):
    # Every record is a new key, so every record costs a GET and a POST.
    event_list = load_events(unique_wiki, THROUGHPUT_RECORDS, keys=THROUGHPUT_RECORDS)
    producer.send_all(event_list)

    with running(rep_config) as instance:
        started = time.monotonic()
        instance.wait_for_total(len(event_list), timeout_s=max(120.0, THROUGHPUT_RECORDS / 20))
        elapsed_s = time.monotonic() - started
    rate = len(event_list) / elapsed_s
    baseline = kask_alone_rate(rep_config, unique_wiki, min(THROUGHPUT_RECORDS, 5000),
                               rep_config.replicator.max_in_flight)
    record_property("replicator_records_per_s", round(rate))
    record_property("kask_alone_records_per_s", round(baseline))
    print(f"\nreplicator: {len(event_list)} records in {elapsed_s:.1f} s = {rate:.0f} records/s; "
          f"Kask alone (GET+POST, {rep_config.replicator.max_in_flight} concurrent): {baseline:.0f} records/s")
    assert missing_or_wrong(rep_config, newest_seen(event_list[-200:])) == {}
