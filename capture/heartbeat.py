"""The capture's own keys in the watched Redis: the heartbeat and the instance lock.

Every ``heartbeat_interval_s`` the capture writes a fresh heartbeat key
(``echoseen:capture:heartbeat<tag>:<instance>:<seq>``, a short TTL) and reads
the server clock in the same script. When the subscription delivers that
key's ``set`` notification, every write that happened before that server
time has already been delivered, because Redis sends one connection's
pub/sub messages in order. That is the barrier the watermark advances on,
and a heartbeat that never comes back reveals a silent subscription.

The same script refreshes the lock key that keeps a second capture off the
same Redis, and takes the lock again when it vanished (a Redis restart).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict

import redis

from capture.patterns import HEARTBEAT_PREFIX, LOCK_PREFIX
from capture.sources import Source
from echoseen.errors import EchoseenError

log = logging.getLogger(__name__)

HEARTBEAT_TTL_MS = 30_000

_HEARTBEAT_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local holder = redis.call('GET', KEYS[2])
local held = 0
if holder == ARGV[3] then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  held = 1
elseif not holder then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  held = 1
end
local now = redis.call('TIME')
return {now[1], now[2], held}
"""

_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LockHeld(EchoseenError):
    """Another capture holds the lock on a source."""


def heartbeat_key_prefix(tag: str, instance: str) -> bytes:
    return f"{HEARTBEAT_PREFIX}{tag}:{instance}:".encode()


def lock_key(tag: str) -> str:
    return f"{LOCK_PREFIX}{tag}"


def lock_token(instance: str) -> str:
    return f"{instance}|{socket.gethostname()}|{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(client: redis.Redis, source: Source, tag: str, instance: str, ttl_s: float,
                 wait_s: float) -> None:
    """Take the instance lock of a source, waiting up to ``wait_s`` for a stale one to expire.

    A lock left by a killed process on this host is taken over at once; a
    lock that another live capture keeps refreshing is a fatal error.
    """
    key = lock_key(tag)
    token = lock_token(instance)
    ttl_ms = int(ttl_s * 1000)
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        if client.set(key, token, nx=True, px=ttl_ms):
            return
        holder = (client.get(key) or b"").decode("utf-8", errors="replace")
        parts = holder.split("|")
        if len(parts) == 3 and parts[1] == socket.gethostname() and parts[2].isdigit() \
                and not _pid_alive(int(parts[2])):
            log.warning("taking over the lock on %s left by capture %s (pid %s, no longer running)",
                        source.name, parts[0], parts[2])
            client.eval(_RELEASE_SCRIPT, 1, key, holder)
            continue
        if time.monotonic() >= deadline:
            raise LockHeld(
                f"another capture holds the lock {key!r} on Redis {source.name}: instance {holder!r} "
                "(instance|host|pid). Only one capture may watch a Redis; stop the other one, or wait "
                f"{ttl_s:.0f} s if it was killed on another host")
        if not announced:
            log.warning("lock %r on %s is held by %s; waiting up to %.0f s for it to expire", key, source.name,
                        holder, wait_s)
            announced = True
        time.sleep(0.5)


def release_lock(client: redis.Redis, tag: str, instance: str) -> None:
    client.eval(_RELEASE_SCRIPT, 1, lock_key(tag), lock_token(instance))


class HeartbeatWriter:
    """Writes heartbeat keys and remembers the server time of each, until its notification returns."""

    def __init__(self, client: redis.Redis, tag: str, instance: str, lock_ttl_s: float) -> None:
        self.client = client
        self.prefix = heartbeat_key_prefix(tag, instance)
        self._lock_key = lock_key(tag)
        self._token = lock_token(instance)
        self._lock_ttl_ms = int(lock_ttl_s * 1000)
        self._script = client.register_script(_HEARTBEAT_SCRIPT)
        self._sequence = 0
        self._times: OrderedDict[int, int] = OrderedDict()
        self._guard = threading.Lock()
        self.last_write_monotonic: float | None = None
        self.lock_lost = False

    def write(self) -> int:
        """Write the next heartbeat; return its server time in microseconds."""
        with self._guard:
            self._sequence += 1
            sequence = self._sequence
        seconds, micros, held = self._script(
            keys=[self.prefix + str(sequence).encode(), self._lock_key],
            args=[sequence, HEARTBEAT_TTL_MS, self._token, self._lock_ttl_ms])
        server_time_us = int(seconds) * 1_000_000 + int(micros)
        with self._guard:
            self._times[sequence] = server_time_us
            while len(self._times) > 10_000:
                self._times.popitem(last=False)
        self.last_write_monotonic = time.monotonic()
        if not int(held):
            self.lock_lost = True
        return server_time_us

    def time_of(self, sequence: int) -> int | None:
        """Return the server time of a heartbeat and forget it and every older one."""
        with self._guard:
            server_time_us = self._times.get(sequence)
            if server_time_us is None:
                return None
            while self._times and next(iter(self._times)) <= sequence:
                self._times.popitem(last=False)
            return server_time_us

    def parse_sequence(self, key: bytes) -> int | None:
        """Return the sequence number of one of this instance's heartbeat keys, else None."""
        if not key.startswith(self.prefix):
            return None
        suffix = key[len(self.prefix):]
        return int(suffix) if suffix.isdigit() else None
