"""Kask value bodies in the format MediaWiki's RESTBagOStuff reads back.

RESTBagOStuff stores ``<TYPE>.<MAC>.<PAYLOAD>`` where TYPE is ``JSON`` or
``PHP``, PAYLOAD is ``json_encode(value)`` or ``serialize(value)``, and MAC is
empty without an HMAC key, else standard Base64 of HMAC-SHA256 over the
payload bytes. The older ``legacy`` mode stores the bare PHP serialization.
A body that RESTBagOStuff cannot decode reads as "missing", which for Echo
means every notification shows as unseen, so this module mirrors its decoder:
the type tag must match the configured one, and the MAC is only checked when a
key is configured.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import Enum

from echoseen import echo_value


class BodyFormat(str, Enum):
    JSON = "JSON"
    PHP = "PHP"
    LEGACY = "legacy"


class Unreadable(str, Enum):
    """Why MediaWiki would read a stored body as missing or as no seen time."""

    OTHER_FORMAT = "other_format"
    BAD_MAC = "bad_mac"
    BAD_PAYLOAD = "bad_payload"
    NOT_A_TIMESTAMP = "not_a_timestamp"


@dataclass(frozen=True, slots=True)
class ReadBack:
    """What MediaWiki would read from a Kask body: a seen time or the reason it reads nothing."""

    seen_time: str | None
    unreadable: Unreadable | None = None


@dataclass(frozen=True)
class BodyCodec:
    """Encoder and decoder for one RESTBagOStuff configuration."""

    body_format: BodyFormat = BodyFormat.JSON
    hmac_key: bytes | None = None

    def __repr__(self) -> str:
        masked = "set" if self.hmac_key else "none"
        return f"BodyCodec(body_format={self.body_format.value}, hmac_key={masked})"

    def _mac(self, payload: bytes) -> bytes:
        if not self.hmac_key:
            return b""
        digest = hmac.new(self.hmac_key, payload, hashlib.sha256).digest()
        return base64.b64encode(digest)

    def encode(self, seen_time: str) -> bytes:
        """Encode a TS_MW seen time as the body MediaWiki reads back."""
        if self.body_format is BodyFormat.JSON:
            payload = json.dumps(seen_time).encode("utf-8")
        else:
            payload = echo_value.encode(seen_time)
        if self.body_format is BodyFormat.LEGACY:
            return payload
        return self.body_format.value.encode("ascii") + b"." + self._mac(payload) + b"." + payload

    def decode(self, body: bytes) -> ReadBack:
        """Decode a stored body the way RESTBagOStuff does, then require a TS_MW string."""
        if self.body_format is BodyFormat.LEGACY:
            payload = body
        else:
            pieces = body.split(b".", 2)
            if len(pieces) != 3 or pieces[0] != self.body_format.value.encode("ascii"):
                return ReadBack(None, Unreadable.OTHER_FORMAT)
            mac, payload = pieces[1], pieces[2]
            if self.hmac_key and not _mac_matches(self._mac(payload), mac):
                return ReadBack(None, Unreadable.BAD_MAC)

        if self.body_format is BodyFormat.JSON:
            try:
                value = json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                return ReadBack(None, Unreadable.BAD_PAYLOAD)
            if not isinstance(value, str) or not echo_value.is_valid_ts_mw(value):
                return ReadBack(None, Unreadable.NOT_A_TIMESTAMP)
            return ReadBack(value)

        decoded = echo_value.decode(payload, max_bytes=len(payload) + 1)
        if decoded.seen_time is None:
            if decoded.error is echo_value.BadValue.NOT_A_TIMESTAMP:
                return ReadBack(None, Unreadable.NOT_A_TIMESTAMP)
            return ReadBack(None, Unreadable.BAD_PAYLOAD)
        return ReadBack(decoded.seen_time)


def _mac_matches(expected_b64: bytes, stored: bytes) -> bool:
    # PHP's base64_decode is lenient, so compare the decoded bytes rather than the text.
    try:
        stored_raw = base64.b64decode(stored, validate=False)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(base64.b64decode(expected_b64), stored_raw)
