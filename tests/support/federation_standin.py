"""A local stand-in for AWS's console federation endpoint (https://signin.aws.amazon.com/federation).

AWS offers no emulator for this endpoint, so this is the one permitted stand-in (see docs/testing.md). It is
honest about what it checks: ``getSigninToken`` verifies the session credentials by calling
``GetCallerIdentity`` with them against the STS emulator, so only credentials that STS really issued get a
token; ``login`` accepts each token once and shows the assumed role, like the console's landing page.
"""

from __future__ import annotations

import html
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
from botocore.exceptions import ClientError


@dataclass
class Landing:
    arn: str
    issuer: str
    destination: str
    session_duration: str | None


@dataclass
class FederationStandIn:
    sts_endpoint: str
    tokens: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    logins: list[Landing] = field(default_factory=list)
    token_requests: int = 0

    def __post_init__(self) -> None:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                if query.get("Action") == "getSigninToken":
                    standin._signin_token(self, query)
                elif query.get("Action") == "login":
                    standin._login(self, query)
                else:
                    self._send(400, "text/plain", "unknown Action")

            def _send(self, status: int, ctype: str, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._handler = Handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/federation"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FederationStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _signin_token(self, handler: Any, query: dict[str, str]) -> None:
        self.token_requests += 1
        try:
            session = json.loads(query["Session"])
            client = boto3.client(
                "sts",
                endpoint_url=self.sts_endpoint,
                region_name="us-east-1",
                aws_access_key_id=session["sessionId"],
                aws_secret_access_key=session["sessionKey"],
                aws_session_token=session["sessionToken"],
            )
            arn = client.get_caller_identity()["Arn"]
        except (KeyError, ValueError, ClientError):
            handler._send(400, "text/plain", "invalid session")
            return
        if ":assumed-role/" not in arn:
            handler._send(400, "text/plain", "not role credentials")
            return
        token = secrets.token_urlsafe(32)
        self.tokens[token] = (arn, query.get("SessionDuration"))
        handler._send(200, "application/json", json.dumps({"SigninToken": token}))

    def _login(self, handler: Any, query: dict[str, str]) -> None:
        found = self.tokens.pop(query.get("SigninToken", ""), None)
        if found is None:
            handler._send(400, "text/html", "<h1>Invalid or used sign-in token</h1>")
            return
        arn, duration = found
        landing = Landing(
            arn=arn, issuer=query.get("Issuer", ""), destination=query.get("Destination", ""), session_duration=duration
        )
        self.logins.append(landing)
        handler._send(
            200,
            "text/html",
            "<!doctype html><title>AWS console (test stand-in)</title>"
            f"<h1>AWS Management Console</h1><p id='arn'>{html.escape(arn)}</p>",
        )
