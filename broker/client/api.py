"""Talking to the broker: sign-in flows (RFC 8252 loopback with PKCE, RFC 8628 device code), refresh-token
rotation, and the credential API. Errors become :class:`HelperError` with one line a person can act on.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import httpx

from broker.client import store
from broker.errors import BrokerError

CLIENT_ID = "broker-cli"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
LOOPBACK_TIMEOUT_SECONDS = 300


class HelperError(BrokerError):
    """A failure of the credential helper; ``message`` is the one line shown on stderr."""

    code = "helper_error"
    status = 1


def not_signed_in(url: str) -> HelperError:
    return HelperError(f"not signed in to {url}: run `broker login --url {url}`")


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str
    principal: str
    mfa: str
    session_expires_at: str


class Broker:
    """An HTTP client for one broker URL."""

    def __init__(self, url: str, *, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout, follow_redirects=False)
        self._metadata: dict[str, Any] | None = None

    def close(self) -> None:
        self.http.close()

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            raise HelperError(f"the broker at {self.url} answered {response.status_code} without JSON") from None
        return body

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise HelperError(f"cannot reach the broker at {self.url}: {type(exc).__name__}") from None

    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            response = self._call("GET", "/.well-known/oauth-authorization-server")
            if response.status_code != 200:
                raise HelperError(f"{self.url} does not look like an identity broker (no OAuth metadata)")
            self._metadata = self._json(response)
        return self._metadata

    def _token(self, data: dict[str, str]) -> dict[str, Any]:
        response = self._call("POST", urlparse(self.metadata()["token_endpoint"]).path, data=data)
        body = self._json(response)
        if response.status_code != 200:
            raise _token_error(self.url, body)
        return body

    def _tokens(self, body: dict[str, Any]) -> Tokens:
        return Tokens(
            access_token=body["access_token"],
            refresh_token=body["refresh_token"],
            principal=body.get("principal", ""),
            mfa=body.get("mfa", ""),
            session_expires_at=body.get("session_expires_at", ""),
        )

    # -------------------------------------------------------- sign-in

    def login_loopback(
        self, open_browser: Callable[[str], bool], say: Callable[[str], None], *, login_hint: str | None = None
    ) -> Tokens:
        """RFC 8252: a redirect to a one-shot HTTP listener on 127.0.0.1, with PKCE S256 and state.

        ``login_hint`` (an e-mail address) lets the broker's home realm discovery pick the sign-in."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(24)
        result: dict[str, str] = {}
        done = threading.Event()

        class Callback(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                if urlparse(self.path).path != "/callback" or query.get("state") != state:
                    self.send_response(400)
                    self.end_headers()
                    return
                result.update(query)
                page = b"<!doctype html><title>Signed in</title><p>Signed in. You can close this tab.</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(page)
                done.set()

        server = HTTPServer(("127.0.0.1", 0), Callback)
        redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/callback"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            params = {
                "response_type": "code",
                "client_id": CLIENT_ID,
                "redirect_uri": redirect_uri,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "state": state,
            }
            if login_hint:
                params["login_hint"] = login_hint
            query = urlencode(params)
            authorize = f"{self.metadata()['authorization_endpoint']}?{query}"
            if not open_browser(authorize):
                say(f"Open this address in your browser to sign in:\n  {authorize}")
            else:
                say("Your browser is open at the broker; finish signing in there.")
            if not done.wait(LOOPBACK_TIMEOUT_SECONDS):
                raise HelperError("sign-in timed out after 5 minutes; run `broker login` again")
        finally:
            server.shutdown()
            server.server_close()
        if "error" in result:
            raise HelperError(f"sign-in was refused: {result.get('error_description') or result['error']}")
        body = self._token(
            {
                "grant_type": "authorization_code",
                "code": result.get("code", ""),
                "redirect_uri": redirect_uri,
                "client_id": CLIENT_ID,
                "code_verifier": verifier,
            }
        )
        return self._tokens(body)

    def login_device(
        self,
        say: Callable[[str], None],
        sleep: Callable[[float], None] = time.sleep,
        *,
        login_hint: str | None = None,
    ) -> Tokens:
        """RFC 8628: show a code, poll the token endpoint, slow down when told to. With ``login_hint``, the
        complete verification address carries it, so the browser goes straight to the right sign-in."""
        endpoint = urlparse(self.metadata()["device_authorization_endpoint"]).path
        response = self._call("POST", endpoint, data={"client_id": CLIENT_ID})
        grant = self._json(response)
        if response.status_code != 200:
            raise _token_error(self.url, grant)
        complete = str(grant.get("verification_uri_complete", grant["verification_uri"]))
        if login_hint:
            complete += ("&" if "?" in complete else "?") + urlencode({"login_hint": login_hint})
        say(
            f"To sign in, open {grant['verification_uri']} and enter the code:\n\n    {grant['user_code']}\n\n"
            f"or open {complete}\n"
            f"Waiting for you to confirm (the code expires in {int(grant['expires_in']) // 60} minutes)..."
        )
        interval = float(grant.get("interval", 5))
        deadline = time.monotonic() + float(grant["expires_in"])
        while time.monotonic() < deadline:
            sleep(interval)
            response = self._call(
                "POST",
                urlparse(self.metadata()["token_endpoint"]).path,
                data={"grant_type": DEVICE_GRANT, "device_code": grant["device_code"], "client_id": CLIENT_ID},
            )
            body = self._json(response)
            if response.status_code == 200:
                return self._tokens(body)
            error = body.get("error")
            if error == "authorization_pending":
                continue
            if error == "slow_down":  # RFC 8628 section 3.5: add 5 seconds to the interval
                interval += 5
                continue
            raise _token_error(self.url, body)
        raise HelperError("the sign-in code expired; run `broker login` again")

    # -------------------------------------------------------- refresh and API

    def access_token(self) -> str:
        """Trade the stored refresh token for an access token; the rotated refresh token replaces it."""
        with store.refresh_lock(self.url):
            refresh = store.get_refresh_token(self.url)
            if not refresh:
                raise not_signed_in(self.url)
            try:
                body = self._token({"grant_type": "refresh_token", "refresh_token": refresh, "client_id": CLIENT_ID})
            except HelperError as exc:
                if "invalid_grant" in exc.reason:
                    store.delete_refresh_token(self.url)
                    raise HelperError(
                        f"your broker sign-in has ended or was revoked: run `broker login --url {self.url}`",
                        reason="invalid_grant",
                    ) from None
                raise
            store.set_refresh_token(self.url, body["refresh_token"])
        token: str = body["access_token"]
        return token

    def _api(self, method: str, path: str, access: str, **kwargs: Any) -> dict[str, Any]:
        response = self._call(method, path, headers={"Authorization": f"Bearer {access}"}, **kwargs)
        body = self._json(response)
        if response.status_code != 200:
            detail = body.get("error_description") or body.get("error") or f"HTTP {response.status_code}"
            raise HelperError(f"the broker refused: {detail}", reason=str(body.get("error", "error")))
        return body

    def roles(self, access: str) -> list[dict[str, Any]]:
        return self.roles_and_aws(access)[0]

    def roles_and_aws(self, access: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The roles, and the AWS settings for profiles: ``{"region": ..., "endpoint_url": ... or None}``."""
        body = self._api("GET", "/api/v1/roles", access)
        aws = body.get("aws") if isinstance(body.get("aws"), dict) else {}
        roles: list[dict[str, Any]] = body["roles"]
        return roles, dict(aws or {})

    def credentials(self, access: str, role: str, duration: int | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"role": role}
        if duration:
            payload["duration_seconds"] = duration
        return self._api("POST", "/api/v1/credentials", access, json=payload)

    def console_url(self, access: str, role: str, duration: int | None) -> str:
        payload: dict[str, Any] = {"role": role}
        if duration:
            payload["duration_seconds"] = duration
        url: str = self._api("POST", "/api/v1/console", access, json=payload)["url"]
        return url

    def revoke(self, refresh_token: str) -> None:
        endpoint = self.metadata().get("revocation_endpoint")
        if endpoint:
            self._call(
                "POST",
                urlparse(endpoint).path,
                data={"token": refresh_token, "client_id": CLIENT_ID, "token_type_hint": "refresh_token"},
            )


def _token_error(url: str, body: dict[str, Any]) -> HelperError:
    error = str(body.get("error", "error"))
    description = body.get("error_description") or error
    if error == "access_denied":
        return HelperError(f"sign-in was denied at the broker: {description}", reason=error)
    if error == "expired_token":
        return HelperError("the sign-in code expired; run `broker login` again", reason=error)
    return HelperError(f"the broker refused ({error}): {description}", reason=error)
