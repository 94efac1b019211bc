"""The key reader: one atomic read of a key's value, absolute expiry and the Redis clock.

Every path that reads Redis (live capture, catch-up, backfill, verify) uses
this reader, so they all see a key the same way. Keys are read by a Lua
script, which Redis runs atomically, so a value, its expiry and the server
time belong to the same instant. On a standalone server one script call reads
a whole batch; on Redis Cluster, where a script may only touch keys of one
slot, each key gets its own call and the calls are pipelined.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import redis

from capture.sources import Source
from echoseen import echo_value, events

log = logging.getLogger(__name__)

# The script's status codes.
_MISSING, _STRING, _OTHER_TYPE, _TOO_LARGE = 0, 1, 2, 3

_SCRIPT_BODY = """
local now = redis.call('TIME')
local limit = tonumber(ARGV[1])
local counters = {hash = 'HLEN', list = 'LLEN', set = 'SCARD', zset = 'ZCARD', stream = 'XLEN'}
local states = {}
for index, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then
    states[index] = {0}
  else
    local expiry
    if ARGV[2] == '1' then
      expiry = redis.call('PEXPIRETIME', key)
    else
      expiry = redis.call('PTTL', key)
    end
    if kind ~= 'string' then
      local size = -1
      if counters[kind] then
        size = redis.call(counters[kind], key)
      end
      states[index] = {2, expiry, kind, size}
    else
      local size = redis.call('STRLEN', key)
      if size > limit then
        states[index] = {3, expiry, 'string', size}
      else
        states[index] = {1, expiry, redis.call('GET', key)}
      end
    end
  end
end
return {now[1], now[2], states}
"""

# Redis 7 reads the shebang and then allows the script on read-only replicas
# and under ACL users without write permissions; older servers reject it.
READ_SCRIPT_REDIS7 = "#!lua flags=no-writes\n" + _SCRIPT_BODY
READ_SCRIPT_LEGACY = _SCRIPT_BODY

# Redis 7 runs the script with EVALSHA_RO, whose ACL check needs only read
# access to the keys (%R~): EVALSHA declares its keys read-write, so an ACL
# user would need write access to every Echo key just to read them.
READ_ONLY_EVALSHA = "EVALSHA_RO"
LEGACY_EVALSHA = "EVALSHA"


@dataclass(frozen=True, slots=True)
class KeyState:
    """A key as read at ``server_time_us``: its value and expiry, or its absence, or why it is unusable."""

    key: bytes
    exists: bool
    server_time_us: int
    value: bytes | None = None
    expire_at_ms: int | None = None
    bad_reason: str | None = None  # echo_value.BadValue values for types and sizes the reader rejects
    redis_type: str | None = None
    size: int | None = None

    def decoded(self, max_value_bytes: int) -> echo_value.Decoded:
        if self.bad_reason is not None:
            return echo_value.Decoded(None, echo_value.BadValue(self.bad_reason))
        return _decode_value(self.value or b"", max_value_bytes)


# Echo writes "now", so every key written within the same second holds the same value, and the live capture
# decodes each value many times in a row. Decoded is immutable, so one result can be shared.
@lru_cache(maxsize=1024)
def _decode_value(value: bytes, max_value_bytes: int) -> echo_value.Decoded:
    return echo_value.decode(value, max_value_bytes)


def server_version(client: redis.Redis) -> tuple[int, ...]:
    text = client.info("server")["redis_version"]
    return tuple(int(part) for part in str(text).split(".")[:3] if part.isdigit())


class KeyReader:
    """Pipelined atomic reads of keys from one source."""

    def __init__(self, client: redis.Redis, source: Source, max_value_bytes: int,
                 force_pttl: bool = False, version: tuple[int, ...] | None = None) -> None:
        self.client = client
        self.source = source
        self.max_value_bytes = max_value_bytes
        version = version if version is not None else server_version(client)
        self.redis7 = version >= (7, 0)
        self.use_pexpiretime = self.redis7 and not force_pttl
        self._script = READ_SCRIPT_REDIS7 if self.redis7 else READ_SCRIPT_LEGACY
        self._evalsha = READ_ONLY_EVALSHA if self.redis7 else LEGACY_EVALSHA
        self._sha = self.client.script_load(self._script)

    def read(self, keys: Sequence[bytes]) -> list[KeyState]:
        """Read a batch of keys; the result has one state per key, in order."""
        if not keys:
            return []
        try:
            return self._run(keys)
        except redis.exceptions.NoScriptError:
            # The server lost its script cache (a restart or SCRIPT FLUSH); load it again once.
            self._sha = self.client.script_load(self._script)
            return self._run(keys)

    def _run(self, keys: Sequence[bytes]) -> list[KeyState]:
        args = (str(self.max_value_bytes), "1" if self.use_pexpiretime else "0")
        if not self.source.cluster:
            seconds, micros, entries = self.client.execute_command(self._evalsha, self._sha, len(keys), *keys, *args)
            server_time_us = int(seconds) * 1_000_000 + int(micros)
            return [self._state(key, entry, server_time_us) for key, entry in zip(keys, entries)]

        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command(self._evalsha, self._sha, 1, key, *args)
        replies = pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        states = []
        for key, (seconds, micros, entries) in zip(keys, replies):
            states.append(self._state(key, entries[0], int(seconds) * 1_000_000 + int(micros)))
        return states

    def _state(self, key: bytes, entry: list, server_time_us: int) -> KeyState:
        status = int(entry[0])
        if status == _MISSING:
            return KeyState(key, False, server_time_us)
        expire_at_ms = self._expiry(int(entry[1]), server_time_us)
        if status == _STRING:
            return KeyState(key, True, server_time_us, value=entry[2], expire_at_ms=expire_at_ms,
                            redis_type="string", size=len(entry[2]))
        kind = entry[2].decode() if isinstance(entry[2], bytes) else str(entry[2])
        reason = echo_value.BadValue.NOT_A_STRING if status == _OTHER_TYPE else echo_value.BadValue.TOO_LARGE
        return KeyState(key, True, server_time_us, expire_at_ms=expire_at_ms, bad_reason=reason.value,
                        redis_type=kind, size=int(entry[3]))

    def _expiry(self, raw: int, server_time_us: int) -> int | None:
        if raw < 0:
            return None
        if self.use_pexpiretime:
            return raw
        return server_time_us // 1000 + raw


def build_event(state: KeyState, origin: str, notification: str | None, source: Source, run_id: str,
                max_value_bytes: int) -> events.SeenTimeEvent | None:
    """Turn a key state into an event; None for values that are never published (wrong type, too large)."""
    if not state.exists:
        return events.SeenTimeEvent(
            op=events.OP_DELETE, key=state.key, value=None, seen_time=None, value_error=None, expire_at_ms=None,
            version_us=state.server_time_us, origin=origin, notification=notification,
            source_server=source.address, source_db=source.db, source_run_id=run_id)
    if state.bad_reason is not None:
        return None
    decoded = state.decoded(max_value_bytes)
    return events.SeenTimeEvent(
        op=events.OP_UPSERT, key=state.key, value=state.value, seen_time=decoded.seen_time,
        value_error=decoded.error.value if decoded.error else None, expire_at_ms=state.expire_at_ms,
        version_us=state.server_time_us, origin=origin, notification=notification,
        source_server=source.address, source_db=source.db, source_run_id=run_id)
