"""Servers for the Kask contract suite: two Kask processes on the session's Cassandra node.

The suite talks HTTP only, so it runs against whatever ``start_kask`` starts:
the kask-standin build by default, or real Kask when ECHOSEEN_KASK_BINARY
names a Kask binary.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kask_http import SHORT_TTL_S, KaskClient

from devstack.cassandra import CassandraServer
from devstack.kask import KaskServer, start_kask


@pytest.fixture(scope="module")
def contract_cassandra(cassandra_server) -> CassandraServer:
    return cassandra_server


@pytest.fixture(scope="module")
def kask(tmp_path_factory: pytest.TempPathFactory, contract_cassandra: CassandraServer) -> Iterator[KaskServer]:
    server = start_kask(tmp_path_factory.mktemp("contract-kask"), contract_cassandra)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def kask_short_ttl(tmp_path_factory: pytest.TempPathFactory,
                   contract_cassandra: CassandraServer) -> Iterator[KaskServer]:
    server = start_kask(tmp_path_factory.mktemp("contract-kask-short-ttl"), contract_cassandra,
                        default_ttl_s=SHORT_TTL_S)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(kask: KaskServer) -> KaskClient:
    return KaskClient(kask)


@pytest.fixture(scope="module")
def short_ttl_client(kask_short_ttl: KaskServer) -> KaskClient:
    return KaskClient(kask_short_ttl)
