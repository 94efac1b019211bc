"""Asynchronous HTTP client for Kask, the key-value service MediaWiki reads Echo seen times from.

Kask takes the key as the rest of the URL path after the service's base URI,
percent-decoded. This client percent-encodes every byte of the key except the
RFC 3986 unreserved characters (A-Z a-z 0-9 ``-._~``), so ``:`` becomes
``%3A``, ``/`` becomes ``%2F`` and a space becomes ``%20``, and it sends the
encoded URL unchanged. Kask responds with 404 to a key that contains ``/``
(even encoded) and to an empty key, so :func:`unaddressable_reason` rejects
those before any request is sent.

One :class:`KaskClient` keeps a pool of keep-alive connections and bounds the
requests in flight. It never retries: the caller decides, because the
replicator pauses a Kafka partition while one of its records waits for a
retry. Each request carries an ``X-Request-Id`` header that Kask writes to its
own log lines. The client is public: the verify tool reads Kask through it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from echoseen.config import KaskConfig
from echoseen.kask_body import BodyCodec, ReadBack

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
_BUILD_INFO_VERSION = re.compile(r'^kask_build_info\{[^}]*version="([^"]*)"', re.MULTILINE)

# Called once per request with (method, status, duration in seconds); status is
# the HTTP status as text, or "timeout" or "connection_error".
RequestObserver = Callable[[str, str, float], None]


class KaskTransportError(Exception):
    """A Kask request that got no HTTP response: a timeout or a connection failure. Always worth retrying."""

    def __init__(self, method: str, key: bytes, kind: str, detail: str) -> None:
        super().__init__(f"{method} {key_for_log(key)} failed ({kind}): {detail}")
        self.method = method
        self.kind = kind
        self.detail = detail

    @property
    def certificate_rejected(self) -> bool:
        """Tell whether Kask's TLS certificate failed verification: a setting to fix, not an outage to wait out."""
        return isinstance(self.__cause__, aiohttp.ClientConnectorCertificateError)


@dataclass(frozen=True, slots=True)
class KaskResponse:
    """The status and body of one Kask response."""

    method: str
    status: int
    body: bytes
    request_id: str

    @property
    def is_server_error(self) -> bool:
        return self.status >= 500

    def problem_detail(self, limit: int = 300) -> str:
        """Return the error body as text for logs and dead-letter headers, cut to ``limit`` characters."""
        text = self.body.decode("utf-8", errors="replace").strip()
        text = " ".join(text.split())
        return text[:limit]

    def read_back(self, codec: BodyCodec) -> ReadBack | None:
        """Decode a 200 body as MediaWiki would read it; None for a 404 (no value stored)."""
        if self.status == 404:
            return None
        if self.status != 200:
            raise ValueError(f"{self.method} returned {self.status}; only 200 and 404 carry a stored value")
        return codec.decode(self.body)


def encode_key(key: bytes) -> str:
    """Percent-encode a key for the URL path as RFC 3986 does: only unreserved characters stay literal."""
    return quote(key, safe="")


# Longer keys are cut in log lines and dead-letter details, so the reason after the key is not cut off.
# The record key of a dead-lettered record keeps the whole key.
MAX_LOGGED_KEY_CHARS = 200


def key_for_log(key: bytes) -> str:
    text = key.decode("utf-8", errors="backslashreplace")
    if len(text) <= MAX_LOGGED_KEY_CHARS:
        return repr(text)
    return f"{text[:MAX_LOGGED_KEY_CHARS]!r}... ({len(key)} bytes)"


def unaddressable_reason(key: bytes, max_key_bytes: int) -> str | None:
    """Return why Kask cannot store ``key`` under its own name, or None when it can.

    Kask splits the decoded path on ``/`` and responds with 404 to a key that
    contains one or is empty. Cassandra stores the key as ``text``, which must
    be valid UTF-8. A key that is the dot segment ``.`` or ``..`` gets a
    redirect from Go's HTTP server (measured with the stand-in), not Kask's handler.
    """
    if not key:
        return "the key is empty"
    if b"/" in key:
        return "the key contains '/', which Kask treats as a path separator even when encoded"
    if key in (b".", b".."):
        return "the key is a dot segment ('.' or '..'), which the HTTP server redirects instead of passing to Kask"
    try:
        key.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"the key is not valid UTF-8 (byte {exc.start})"
    if len(key) > max_key_bytes:
        return f"the key is {len(key)} bytes long, over the limit of {max_key_bytes} ([kask] max_key_bytes)"
    return None


def _ssl_context(config: KaskConfig) -> ssl.SSLContext | None:
    if urlsplit(config.url).scheme != "https":
        return None
    context = ssl.create_default_context(cafile=config.ca_file or None)
    return context


class KaskClient:
    """Kask GET, POST and DELETE over pooled keep-alive connections, at most ``max_in_flight`` at once.

    Use it as an async context manager, or call :meth:`open` and :meth:`close`.
    """

    def __init__(self, config: KaskConfig, max_in_flight: int = 32,
                 observer: RequestObserver | None = None) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.config = config
        self.base_url = config.url if config.url.endswith("/") else config.url + "/"
        parts = urlsplit(self.base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.max_in_flight = max_in_flight
        self._observer = observer
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._in_flight = 0
        # Request ids: one random prefix per client plus a counter, cheaper than a UUID per request.
        self._request_prefix = f"echoseen-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._request_numbers = itertools.count(1)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def open(self) -> "KaskClient":
        if self._session is not None:
            return self
        connector = aiohttp.TCPConnector(limit=self.max_in_flight, ssl=_ssl_context(self.config) or False,
                                         keepalive_timeout=30.0, ttl_dns_cache=60)
        # The timeout covers one request; waiting for a free slot happens before it starts.
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                              skip_auto_headers=("User-Agent",),
                                              headers={"User-Agent": "echoseen-replicator"})
        self._slots = asyncio.Semaphore(self.max_in_flight)
        return self

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> "KaskClient":
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def url_for(self, key: bytes) -> URL:
        return URL(self.base_url + encode_key(key), encoded=True)

    async def get(self, key: bytes) -> KaskResponse:
        return await self._request("GET", key, self.url_for(key))

    async def post(self, key: bytes, body: bytes) -> KaskResponse:
        if not body:
            raise ValueError("Kask rejects an empty body with 400; refusing to send one")
        return await self._request("POST", key, self.url_for(key), body)

    async def delete(self, key: bytes) -> KaskResponse:
        return await self._request("DELETE", key, self.url_for(key))

    async def healthz(self) -> KaskResponse:
        """GET /healthz at the server root; Kask returns 200 without checking Cassandra."""
        return await self._request("GET", b"/healthz", URL(self.origin + "/healthz", encoded=True),
                                   observe=False)

    async def server_version(self) -> str:
        """Return Kask's version from /healthz (JSON "version"), else from the kask_build_info metric.

        Raises KaskTransportError when /healthz does not respond.
        """
        response = await self.healthz()
        if response.status != 200:
            return f"unknown (/healthz returned {response.status})"
        try:
            document = json.loads(response.body) if response.body.strip() else {}
        except ValueError:
            document = {}
        if isinstance(document, dict) and document.get("version"):
            return str(document["version"])

        # Kask's own /healthz has an empty body; its build info is a metric.
        metrics = await self._request("GET", b"/metrics", URL(self.origin + "/metrics", encoded=True), observe=False)
        match = _BUILD_INFO_VERSION.search(metrics.body.decode("utf-8", errors="replace"))
        return match.group(1) if metrics.status == 200 and match else "unknown"

    async def read(self, key: bytes, codec: BodyCodec) -> ReadBack | None:
        """Read a key once and decode it as MediaWiki would; None when Kask stores nothing under it.

        Raises KaskTransportError without a response and ValueError for any status but 200 and 404.
        """
        response = await self.get(key)
        return response.read_back(codec)

    async def _request(self, method: str, key: bytes, url: URL, body: bytes | None = None,
                       observe: bool = True) -> KaskResponse:
        if self._session is None or self._slots is None:
            raise RuntimeError("KaskClient is not open; use `async with KaskClient(...)` or call open()")
        request_id = f"{self._request_prefix}-{next(self._request_numbers)}"
        headers = {REQUEST_ID_HEADER: request_id}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"

        async with self._slots:
            self._in_flight += 1
            started = time.monotonic()
            status_label = "connection_error"
            try:
                async with self._session.request(method, url, data=body, headers=headers,
                                                 allow_redirects=False) as response:
                    payload = await response.read()
                    status_label = str(response.status)
                    return KaskResponse(method, response.status, payload, request_id)
            except asyncio.TimeoutError as exc:
                status_label = "timeout"
                raise KaskTransportError(method, key, "timeout",
                                         f"no response within {self.config.timeout_s} s ([kask] timeout_s), "
                                         f"request id {request_id}") from exc
            except aiohttp.ClientError as exc:
                raise KaskTransportError(method, key, "connection_error",
                                         f"{type(exc).__name__}: {exc}; request id {request_id}") from exc
            finally:
                self._in_flight -= 1
                if observe and self._observer is not None:
                    self._observer(method, status_label, time.monotonic() - started)
