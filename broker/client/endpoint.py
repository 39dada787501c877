"""A local credentials endpoint for the AWS SDKs' container credentials provider, on loopback.

Every AWS SDK and the AWS CLI read ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` (a loopback ``http://`` URL) and
send ``AWS_CONTAINER_AUTHORIZATION_TOKEN`` as the ``Authorization`` header (AWS SDKs and Tools Reference
Guide, "Container credential provider"). A long-running tool then asks this endpoint whenever its
credentials near expiry: no process is started per call, and the credentials come from the same encrypted
cache and refresh as ``credential-process``.

The endpoint listens on 127.0.0.1 only and answers only requests carrying the random token it was started
with (compared in constant time), so another local user or a web page cannot read credentials from it.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from broker.client import process

Fetch = Callable[[str, str, int | None], bytes]
PATH_PREFIX = "/role/"


class CredentialsEndpoint:
    """Serve ``GET /role/<role>`` for the given roles, with the container provider's JSON shape."""

    def __init__(
        self,
        url: str,
        roles: list[str],
        *,
        duration: int | None = None,
        port: int = 0,
        token: str | None = None,
        fetch: Fetch = process.fetch,
    ) -> None:
        self.url = url
        self.roles = set(roles)
        self.duration = duration
        self.token = token or secrets.token_urlsafe(32)
        self._fetch = fetch
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "broker-credentials"
            sys_version = ""

            def log_message(self, *args: Any) -> None:  # request lines are not logged: nothing to leak
                pass

            def do_GET(self) -> None:
                status, body = endpoint.answer(self.path, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def uri(self, role: str) -> str:
        return f"http://127.0.0.1:{self.port}{PATH_PREFIX}{role}"

    def environment(self, role: str) -> dict[str, str]:
        """What an SDK needs in its environment to use this endpoint for ``role``."""
        return {"AWS_CONTAINER_CREDENTIALS_FULL_URI": self.uri(role), "AWS_CONTAINER_AUTHORIZATION_TOKEN": self.token}

    def answer(self, path: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        if not authorization or not hmac.compare_digest(authorization.encode(), self.token.encode()):
            return 401, {"code": "unauthorized", "message": "Send the AWS_CONTAINER_AUTHORIZATION_TOKEN value."}
        role = path.split("?", 1)[0].removeprefix(PATH_PREFIX) if path.startswith(PATH_PREFIX) else ""
        if role not in self.roles:
            return 404, {"code": "unknown_role", "message": f"This endpoint serves {sorted(self.roles)}."}
        try:
            creds = json.loads(self._fetch(self.url, role, self.duration))
        except Exception as exc:
            message = getattr(exc, "message", None) or type(exc).__name__
            return 502, {"code": "broker_error", "message": str(message)}
        return 200, {
            "AccessKeyId": creds["AccessKeyId"],
            "SecretAccessKey": creds["SecretAccessKey"],
            "Token": creds["SessionToken"],
            "Expiration": creds["Expiration"],
        }

    def __enter__(self) -> CredentialsEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
