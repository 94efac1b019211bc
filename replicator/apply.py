"""Monotonic apply: the rules that decide what one seen-time event does to Kask.

For an upsert the replicator reads the key from Kask, decodes the stored body
as MediaWiki's RESTBagOStuff would, and writes (POST) only when:

- Kask stores nothing under the key (404), or
- Kask stores something MediaWiki cannot read: another body format, a bad
  MAC, an undecodable payload, or Echo's placeholder ``19700101000001``, or
- the incoming seen time is newer than the stored one.

An equal stored seen time means the event was already applied, and a newer
one means the event is stale. An incoming placeholder is never written.
Explicit deletes (``del``, ``unlink``, ``rename_from``, ``move_from``) delete
the key only when Kask stores nothing newer than the delete's version, which is
the Redis clock when the key was found gone, truncated to the second. Deletes
caused by expiry or eviction never touch Kask, because Kask expires keys
itself.

Read-then-write window: Kask has no compare-and-set, so a MediaWiki write that
lands between this module's GET and its POST (or DELETE) is overwritten by an
older value. The window is at most one GET-to-POST round trip, plus the
retries of the POST when it fails with a timeout or 5xx, because each retry
starts again from a new GET. During dual-write MediaWiki also writes Redis.
The capture publishes that write as a later event of the same key, and this
module applies it because it is newer than what it overwrote. So the repair
comes with the next event of that key. After Redis is retired nothing repairs it, which is
why the replicator must be stopped before MediaWiki reads Kask alone.

Nothing here retries: a failure that a retry can fix raises
:class:`KaskRetryableError`, and one that can never succeed raises
:class:`RecordRejected` with the reason the dead-letter topic records.
"""

from __future__ import annotations

import time
from enum import Enum

from echoseen import echo_value
from echoseen.config import Config
from echoseen.events import OP_DELETE, OP_UPSERT, SeenTimeEvent
from echoseen.kask_body import BodyCodec, BodyFormat, ReadBack
from echoseen.ratelimit import TokenBucket
from replicator.kask_client import KaskClient, KaskResponse, KaskTransportError, key_for_log, unaddressable_reason


class Outcome(str, Enum):
    """Result of applying one record; each value is a label of the records metric."""

    WRITTEN = "written"
    ALREADY_APPLIED = "already_applied"
    STALE = "stale"
    DELETED = "deleted"
    SKIPPED_PLACEHOLDER = "skipped_placeholder"
    SKIPPED_EXPIRY = "skipped_expiry"
    DEAD_LETTERED = "dead_lettered"
    # Dry-run variants: what would have changed, with nothing written.
    WOULD_WRITE = "would_write"
    WOULD_DELETE = "would_delete"
    WOULD_DEAD_LETTER = "would_dead_letter"


class Action(str, Enum):
    WRITE = "write"
    DELETE = "delete"
    ALREADY_APPLIED = "already_applied"
    STALE = "stale"
    SKIP_PLACEHOLDER = "skip_placeholder"
    SKIP_EXPIRY = "skip_expiry"


# Dead-letter reasons besides the EventError reasons (invalid_json, schema_violation).
REASON_BAD_VALUE = "bad_value"
REASON_UNADDRESSABLE_KEY = "unaddressable_key"
REASON_KASK_REJECTED = "kask_rejected"
REASON_KASK_SERVER_ERROR = "kask_server_error"


class RecordRejected(Exception):
    """A record that can never be applied; it goes to the dead-letter topic with this reason and detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class KaskRetryableError(Exception):
    """A Kask request that may succeed when retried: a timeout, a connection error or a 5xx status."""

    def __init__(self, method: str, detail: str, status: int | None = None, kind: str = "") -> None:
        super().__init__(f"{method}: {detail}")
        self.method = method
        self.detail = detail
        self.status = status
        self.kind = kind or ("http_5xx" if status is not None else "connection_error")


def codec_from_config(config: Config) -> BodyCodec:
    """Build the body codec of the configured RESTBagOStuff format, with the HMAC key from its secret source."""
    hmac_key = config.kask_hmac_key().reveal()
    return BodyCodec(BodyFormat(config.kask.body_format), hmac_key=hmac_key.encode("utf-8") if hmac_key else None)


def is_readable(stored: ReadBack | None) -> bool:
    """Return True when Kask stores a seen time MediaWiki would read and use."""
    return (stored is not None and stored.seen_time is not None
            and stored.seen_time != echo_value.PLACEHOLDER)


def decide_upsert(incoming_seen_time: str, stored: ReadBack | None) -> Action:
    """Decide an upsert from the incoming seen time and what MediaWiki would read from Kask (None for 404)."""
    if incoming_seen_time == echo_value.PLACEHOLDER:
        return Action.SKIP_PLACEHOLDER
    if not is_readable(stored):
        return Action.WRITE
    # TS_MW strings have a fixed width, so text order is time order.
    if incoming_seen_time > stored.seen_time:
        return Action.WRITE
    if incoming_seen_time == stored.seen_time:
        return Action.ALREADY_APPLIED
    return Action.STALE


def decide_delete(event: SeenTimeEvent, stored: ReadBack | None) -> Action:
    """Decide a delete event from what MediaWiki would read from Kask (None for 404)."""
    if not event.is_explicit_delete:
        return Action.SKIP_EXPIRY
    if stored is None:
        return Action.ALREADY_APPLIED
    if not is_readable(stored):
        return Action.DELETE
    delete_version = echo_value.ts_mw_from_epoch_us(event.version_us)
    if stored.seen_time > delete_version:
        return Action.STALE
    return Action.DELETE


def check_event(event: SeenTimeEvent, max_key_bytes: int) -> None:
    """Raise RecordRejected for an event that needs Kask but can never be applied."""
    if event.op == OP_UPSERT and event.seen_time is None:
        reason = event.value_error or "no seen_time and no value_error"
        raise RecordRejected(REASON_BAD_VALUE, f"the value under {key_for_log(event.key)} is not a seen time "
                                               f"({reason})")
    if not needs_kask(event):
        return
    problem = unaddressable_reason(event.key, max_key_bytes)
    if problem is not None:
        raise RecordRejected(REASON_UNADDRESSABLE_KEY, f"Kask cannot address {key_for_log(event.key)}: {problem}")


def needs_kask(event: SeenTimeEvent) -> bool:
    """Return False for events that are decided without reading Kask."""
    if event.op == OP_UPSERT:
        return event.seen_time != echo_value.PLACEHOLDER
    return event.op == OP_DELETE and event.is_explicit_delete


class Applier:
    """Apply one event to Kask following the monotonic rules; each call is one attempt."""

    def __init__(self, client: KaskClient, codec: BodyCodec, max_key_bytes: int,
                 rate_limit: TokenBucket | None = None, dry_run: bool = False) -> None:
        self.client = client
        self.codec = codec
        self.max_key_bytes = max_key_bytes
        self.rate_limit = rate_limit or TokenBucket(0)
        self.dry_run = dry_run
        # time.monotonic() of the last response that was not a 5xx, per method; -inf before the first.
        self.last_success_s: dict[str, float] = {"GET": float("-inf"), "POST": float("-inf"),
                                                 "DELETE": float("-inf")}

    async def apply(self, event: SeenTimeEvent) -> Outcome:
        """Apply one event; raise RecordRejected or KaskRetryableError when it cannot be applied now."""
        check_event(event, self.max_key_bytes)
        if event.op == OP_UPSERT:
            return await self._apply_upsert(event)
        return await self._apply_delete(event)

    async def _apply_upsert(self, event: SeenTimeEvent) -> Outcome:
        assert event.seen_time is not None  # check_event rejected upserts without one
        if event.seen_time == echo_value.PLACEHOLDER:
            return Outcome.SKIPPED_PLACEHOLDER

        # Step 1: read what MediaWiki would read now.
        stored = await self._read(event.key)

        # Step 2: decide, then write only when the incoming seen time wins.
        action = decide_upsert(event.seen_time, stored)
        if action is Action.ALREADY_APPLIED:
            return Outcome.ALREADY_APPLIED
        if action is Action.STALE:
            return Outcome.STALE
        if self.dry_run:
            return Outcome.WOULD_WRITE
        response = await self._send("POST", event.key, self.codec.encode(event.seen_time))
        self._require_success(response, event.key)
        return Outcome.WRITTEN

    async def _apply_delete(self, event: SeenTimeEvent) -> Outcome:
        if not event.is_explicit_delete:
            return Outcome.SKIPPED_EXPIRY

        stored = await self._read(event.key)

        action = decide_delete(event, stored)
        if action is Action.ALREADY_APPLIED:
            return Outcome.ALREADY_APPLIED
        if action is Action.STALE:
            return Outcome.STALE
        if self.dry_run:
            return Outcome.WOULD_DELETE
        response = await self._send("DELETE", event.key)
        self._require_success(response, event.key)
        return Outcome.DELETED

    async def _read(self, key: bytes) -> ReadBack | None:
        response = await self._send("GET", key)
        if response.status in (200, 404):
            return response.read_back(self.codec)
        self._require_success(response, key)
        raise RecordRejected(REASON_KASK_REJECTED,
                             f"GET {key_for_log(key)} returned {response.status}, expected 200 or 404: "
                             f"{response.problem_detail()}")

    async def _send(self, method: str, key: bytes, body: bytes | None = None) -> KaskResponse:
        await self.rate_limit.acquire_async()
        try:
            if method == "GET":
                response = await self.client.get(key)
            elif method == "POST":
                assert body is not None
                response = await self.client.post(key, body)
            else:
                response = await self.client.delete(key)
        except KaskTransportError as exc:
            raise KaskRetryableError(method, str(exc), kind=exc.kind) from exc
        if not response.is_server_error:
            self.last_success_s[method] = time.monotonic()
        return response

    def _require_success(self, response: KaskResponse, key: bytes) -> None:
        if 200 <= response.status < 300:
            return
        detail = (f"{response.method} {key_for_log(key)} returned {response.status} "
                  f"(request id {response.request_id}): {response.problem_detail()}")
        if response.is_server_error:
            raise KaskRetryableError(response.method, detail, status=response.status)
        raise RecordRejected(REASON_KASK_REJECTED, detail)
