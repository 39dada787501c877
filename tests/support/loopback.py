"""Small real HTTP peers on loopback: a JWKS host that records every hit, and a recording proxy.

``LoopbackServer`` serves fixed JSON documents by path (a Kubernetes cluster's ``/openid/v1/jwks``, an
attacker's ``jku`` target) and records each request, so a test can assert that a URL was never fetched.
With ``proxy_to`` it forwards every request to another server (e.g. moto's STS) and records the bodies, so a
test can read exactly what the broker sent upstream.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from tests.support.processes import free_port


class LoopbackServer:
    def __init__(self, *, proxy_to: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.delay_seconds = 0.0
        self.proxy_to = proxy_to
        self.hits: list[tuple[str, str]] = []
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def serve_json(self, path: str, document: Any, status: int = 200) -> str:
        self.routes[path] = (status, json.dumps(document).encode())
        return self.url + path

    def hit_count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for _, p in self.hits if path is None or p == path)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _record(self, body: bytes) -> None:
                with owner._lock:
                    owner.hits.append((self.command, self.path))
                    owner.bodies.append(body)
                    owner.headers.append({k.lower(): v for k, v in self.headers.items()})

            def _respond(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._record(b"")
                if owner.delay_seconds:
                    time.sleep(owner.delay_seconds)
                status, body = owner.routes.get(self.path, (404, b'{"error":"not found"}'))
                self._respond(status, body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._record(body)
                if owner.proxy_to is None:
                    self._respond(404, b"{}")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "content-length"}}
                request = urllib.request.Request(owner.proxy_to + self.path, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=10) as upstream:
                        self._respond(
                            upstream.status, upstream.read(), upstream.headers.get("Content-Type", "text/xml")
                        )
                except urllib.error.HTTPError as error:
                    self._respond(error.code, error.read(), error.headers.get("Content-Type", "text/xml"))

        return Handler
