"""A fault-injecting HTTP proxy for tests: forwards every request to an upstream server (Kask) and breaks some.

Faults, all changeable while the proxy runs:

- ``error_rate``: share of requests that get ``error_status`` as the response
  without reaching the upstream.
- ``error_after_rate``: share of requests forwarded (so a write happens) whose
  response is then replaced by ``error_status``, as when a response is lost.
- ``fail_paths``: requests whose raw path contains one of these strings always
  get ``error_status``.
- ``delay_s``: a pause before forwarding, to make the upstream slow;
  ``delay_methods`` limits it to some HTTP methods (all when empty). The
  request body is read before the pause, so a delayed write is still
  forwarded after its client gave up, as a server applies a write that
  arrived before the client's timeout but ran after it.
- ``drop_connections``: close each connection without a response (a
  connection error at the client).

The raw, still percent-encoded path is forwarded unchanged. The proxy runs an
aiohttp server on its own event loop in a background thread, so tests drive it
with plain method calls. From another process, ``/__faults`` reads (GET) or
changes (POST, JSON) the faults over HTTP. As a command:

    python -m devstack.faultproxy --upstream http://127.0.0.1:8081 --error-rate 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import threading
from collections import Counter
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from devstack.process import LOOPBACK

log = logging.getLogger(__name__)

CONTROL_PATH = "/__faults"
# Hop-by-hop headers and those aiohttp computes itself.
_SKIPPED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass(frozen=True)
class Faults:
    error_rate: float = 0.0
    error_after_rate: float = 0.0
    error_status: int = 500
    fail_paths: tuple[str, ...] = ()
    delay_s: float = 0.0
    delay_methods: tuple[str, ...] = ()
    drop_connections: bool = False


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` (scheme://host:port); start() binds it."""

    def __init__(self, upstream: str, port: int = 0, seed: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.requested_port = port
        self.port: int | None = None
        self.stats: Counter[str] = Counter()
        self._faults = Faults()
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def set_faults(self, **changes: object) -> Faults:
        """Change some faults, keep the others; return the new set."""
        with self._lock:
            self._faults = dataclasses.replace(self._faults, **changes)
            # JSON from the control endpoint gives lists; Faults keeps tuples so it stays hashable and frozen.
            self._faults = dataclasses.replace(self._faults, fail_paths=tuple(self._faults.fail_paths),
                                               delay_methods=tuple(self._faults.delay_methods))
            faults = self._faults
        log.info("fault proxy on port %s: %s", self.port, faults)
        return faults

    def clear_faults(self) -> Faults:
        with self._lock:
            self._faults = Faults()
        return self._faults

    def url(self, path: str = "") -> str:
        if self.port is None:
            raise RuntimeError("the fault proxy is not started")
        return f"http://{LOOPBACK}:{self.port}{path}"

    def start(self, timeout_s: float = 10.0) -> "FaultProxy":
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError(f"fault proxy did not start within {timeout_s} s")
        if self._start_error is not None:
            raise RuntimeError(f"fault proxy failed to start: {self._start_error}") from self._start_error
        log.info("fault proxy on %s forwards to %s", self.url(), self.upstream)
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the server thread -------------------------------------------------

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        loop.run_forever()
        loop.close()

    async def _open(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False,
                                              timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Requests held by delay_s must not hold up stop().
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, self.requested_port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == CONTROL_PATH:
            return await self._control(request)
        faults = self.faults
        self.stats["requests"] += 1

        if faults.drop_connections:
            self.stats["dropped"] += 1
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=503)
        if any(fragment in request.raw_path for fragment in faults.fail_paths):
            self.stats["failed_paths"] += 1
            return self._error(faults.error_status, request.raw_path)
        if faults.error_rate and self._random.random() < faults.error_rate:
            self.stats["errors_before"] += 1
            return self._error(faults.error_status, request.raw_path)
        if faults.delay_s and (not faults.delay_methods or request.method in faults.delay_methods):
            self.stats["delayed"] += 1
            # aiohttp keeps the body once read, so _forward still has it after the client has gone.
            await request.read()
            await asyncio.sleep(faults.delay_s)

        response = await self._forward(request)
        if faults.error_after_rate and self._random.random() < faults.error_after_rate:
            self.stats["errors_after"] += 1
            return self._error(faults.error_status, request.raw_path)
        return response

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _SKIPPED_HEADERS}
        body = await request.read()
        target = URL(self.upstream + request.raw_path, encoded=True)
        try:
            async with self._session.request(request.method, target, headers=headers, data=body or None,
                                             allow_redirects=False) as upstream:
                payload = await upstream.read()
                self.stats["forwarded"] += 1
                reply_headers = {name: value for name, value in upstream.headers.items()
                                 if name.lower() not in _SKIPPED_HEADERS and name.lower() != "content-type"}
                return web.Response(status=upstream.status, body=payload, headers=reply_headers,
                                    content_type=upstream.content_type if payload else None)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.stats["upstream_errors"] += 1
            return web.Response(status=502, text=f"fault proxy: upstream {self.upstream} failed: {exc}\n")

    def _error(self, status: int, path: str) -> web.Response:
        problem = {"type": "https://www.mediawiki.org/wiki/Kask/errors/server_error",
                   "title": "Injected fault", "detail": "devstack.faultproxy injected this error",
                   "instance": path}
        return web.json_response(problem, status=status)

    async def _control(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                changes = await request.json()
                self.set_faults(**changes)
            except (ValueError, TypeError) as exc:
                return web.json_response({"error": f"invalid fault settings: {exc}"}, status=400)
        return web.json_response({"faults": dataclasses.asdict(self.faults), "stats": dict(self.stats)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="upstream origin, e.g. http://127.0.0.1:8081")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of requests that get a 500 response")
    parser.add_argument("--delay-s", type=float, default=0.0, help="delay before forwarding, in seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    proxy = FaultProxy(args.upstream, args.port).start()
    proxy.set_faults(error_rate=args.error_rate, delay_s=args.delay_s)
    print(json.dumps({"url": proxy.url(), "control": proxy.url(CONTROL_PATH)}), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    proxy.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
