"""HTTP client for the Kask contract suite."""

from __future__ import annotations

import http.client
import urllib.parse
from dataclasses import dataclass
from email.message import Message

from devstack.kask import KaskServer

# The default_ttl of the second Kask that the suite starts, to watch values expire.
SHORT_TTL_S = 2


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Message
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


class KaskClient:
    """Sends requests with the exact path given, so encoded characters reach Kask as written."""

    def __init__(self, server: KaskServer) -> None:
        self.server = server
        parsed = urllib.parse.urlsplit(server.base_url)
        self.host = parsed.hostname
        self.port = parsed.port
        self.context = server.ssl_context()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        if self.context is None:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        else:
            connection = http.client.HTTPSConnection(self.host, self.port, timeout=30, context=self.context)
        try:
            request_headers = dict(headers or {})
            if body is not None:
                request_headers.setdefault("Content-Type", "application/octet-stream")
            connection.request(method, path, body=body, headers=request_headers)
            response = connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            connection.close()

    def key_path(self, key: str) -> str:
        """Percent-encode the key as RFC 3986 does (every reserved character, ':' and '/' included)."""
        return self.server.settings.base_uri + urllib.parse.quote(key, safe="")

    def decoded_path(self, key: str) -> str:
        """Return the request path after percent-decoding, which error bodies carry as "instance"."""
        return self.server.settings.base_uri + key

    def post(self, key: str, value: bytes) -> Reply:
        return self.request("POST", self.key_path(key), body=value)

    def get(self, key: str) -> Reply:
        return self.request("GET", self.key_path(key))

    def delete(self, key: str) -> Reply:
        return self.request("DELETE", self.key_path(key))
