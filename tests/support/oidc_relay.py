"""A loopback relay in front of the real OIDC provider that forges ID tokens at the token-response boundary.

Why it exists: the hostile ID-token cases (``alg: none``, key confusion, a foreign signature, wrong
``iss``/``aud``/``nonce``, an expired token, ...) need tokens that the real provider would never sign. The
provider's signing keys are generated afresh inside the Node process and never leave it, so the only way to
deliver a forged token through the broker's real HTTP path is to sit between the broker and the provider.

How: the provider is started with its ``issuer`` set to the relay's URL, so the discovery document, the login
pages, userinfo and the token endpoint all go through the relay, verbatim. The relay changes exactly two
responses: ``/jwks`` publishes the relay's own test key instead of the provider's, and the token response's
``id_token`` is replaced by ``forge(header, claims)`` where ``claims`` are the real provider's claims (correct
``nonce``, ``aud``, ``sub`` ...). The default forge re-signs them unchanged with the published key, so a
test that passes with the default and fails with a mutation proves the mutation alone was refused.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey

Forge = Callable[["OidcRelay", dict[str, Any], dict[str, Any]], str]
# The Host header is forwarded as is: the provider builds its endpoint URLs from it, and they must all point
# at the relay.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unverified_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def resign(relay: OidcRelay, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """The default forge: the real claims, signed by the key the relay publishes."""
    return jwt.encode({"alg": "RS256", "kid": relay.key.kid, **header}, claims, relay.key, algorithms=["RS256"])


class OidcRelay:
    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "relay-key-1", "use": "sig", "alg": "RS256"})
        self.forge: Forge = resign
        self.requests: Counter[str] = Counter()
        self.upstream = ""
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                relay._relay(self)

            def do_POST(self) -> None:
                relay._relay(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.http = httpx.Client(timeout=10, follow_redirects=False)

    def start(self, upstream: str) -> OidcRelay:
        self.upstream = upstream
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()

    def published_jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def _relay(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        self.requests[path] = self.requests[path] + 1
        if path == "/jwks":
            self._send(handler, 200, [("Content-Type", "application/json")], json.dumps(self.published_jwks()).encode())
            return
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = [(k, v) for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP]
        upstream = self.http.request(handler.command, self.upstream + handler.path, headers=headers, content=body)
        content = upstream.content
        if path == "/token" and upstream.status_code == 200:
            tokens = upstream.json()
            if "id_token" in tokens:
                real = tokens["id_token"]
                header = json.loads(base64.urlsafe_b64decode(real.split(".")[0] + "=="))
                header.pop("kid", None)
                header.pop("alg", None)
                tokens["id_token"] = self.forge(self, header, unverified_claims(real))
            content = json.dumps(tokens).encode()
        out = [(k, v) for k, v in upstream.headers.multi_items() if k.lower() not in _HOP_BY_HOP]
        self._send(handler, upstream.status_code, out, content)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        handler.send_response(status)
        for key, value in headers:
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
