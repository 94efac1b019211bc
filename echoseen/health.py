"""The HTTP endpoint of each daemon: Prometheus /metrics, liveness /healthz and readiness /readyz.

Both daemons run it in a background thread. A check returns ``(ok, detail)``;
the endpoint answers 200 or 503 with the detail as JSON, so a supervisor or a
Kubernetes probe can act on it and an operator can read why.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from echoseen import __version__

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]


def register_build_info(registry: CollectorRegistry, component: str) -> None:
    info = Gauge("echoseen_build_info", "Always 1; labels carry the version and the component.",
                 ["version", "component"], registry=registry)
    info.labels(version=__version__, component=component).set(1)


class HealthServer:
    """Serve /metrics, /healthz and /readyz on one address until stopped."""

    def __init__(self, registry: CollectorRegistry, address: str, port: int,
                 liveness: Check, readiness: Check) -> None:
        self.registry = registry
        self.liveness = liveness
        self.readiness = readiness
        handler = self._handler_class()
        try:
            self._server = ThreadingHTTPServer((address, port), handler)
        except OSError as exc:
            raise OSError(f"cannot listen on {address}:{port} for metrics and health: {exc.strerror}; "
                          "choose another port with the metrics_port setting") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-server", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> "HealthServer":
        self._thread.start()
        log.info("metrics and health endpoints on http://%s:%d/ (/metrics, /healthz, /readyz)",
                 self._server.server_address[0], self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - name fixed by http.server
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
                elif path in ("/healthz", "/readyz"):
                    check = server.liveness if path == "/healthz" else server.readiness
                    try:
                        ok, detail = check()
                    except Exception as exc:  # noqa: BLE001 - a failing check is itself a failed probe
                        ok, detail = False, f"check raised {type(exc).__name__}: {exc}"
                    body = json.dumps({"ok": ok, "detail": detail}).encode()
                    self._reply(200 if ok else 503, "application/json", body)
                else:
                    self._reply(404, "text/plain", b"not found; try /metrics, /healthz or /readyz\n")

            def _reply(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature fixed
                return

        return Handler
