"""A private redis-server for the devstack tests, one per test module."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from devstack.process import LOOPBACK, ManagedProcess, free_port


@dataclass(frozen=True)
class PrivateRedis:
    """A redis-server that only this test module uses, without persistence."""

    port: int
    process: ManagedProcess

    def url(self, db: int = 0) -> str:
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, db=db)


@pytest.fixture(scope="module")
def keyspace_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    # TODO: use devstack.redis_server instead; this minimal fixture keeps the keyspace tests independent of it.
    work_dir = tmp_path_factory.mktemp("keyspace-redis")
    port = free_port()
    process = ManagedProcess(
        name=f"redis-server:{port}",
        argv=["redis-server", "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
              "--dir", str(work_dir)],
        log_path=work_dir / "redis.log",
    ).start()
    server = PrivateRedis(port, process)
    probe = server.client()
    try:
        process.wait_until(probe.ping, timeout_s=20, what="answering PING")
        yield server
    finally:
        probe.close()
        process.stop()
