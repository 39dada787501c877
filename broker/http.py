"""Outgoing HTTP: the broker's only user of httpx (``broker/client`` is the separate light program).

Every request the broker makes (JWKS and discovery documents, CRLs, the AWS console federation endpoint,
webhooks, an IdP's token and userinfo endpoints) goes through :class:`HttpClient`, which fixes the policy
docs/security.md ("Tokens from elsewhere and outgoing requests") states:

- explicit connect and read timeouts (a slow peer delays only its own request);
- a response size cap enforced while the body streams in, before it is parsed (a hostile or broken peer
  cannot make the broker buffer an unbounded answer);
- TLS verified against the system's trust store or a configured CA bundle; proxy settings read from the
  environment only where the policy says so (peers an operator may reach through a proxy);
- no redirects unless the caller asks (a configured URL is the one fetched).

Failures are broker errors: a peer that cannot be reached, times out or fails TLS is
:class:`UpstreamUnavailable` (503 with ``Retry-After``), a body over the cap is :class:`UpstreamTooLarge`
(502). Callers that name the peer in their own refusal catch these and re-raise with their own reason.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from broker.errors import ServiceUnavailable, UpstreamError

DEFAULT_CONNECT_SECONDS = 5.0
DEFAULT_READ_SECONDS = 10.0
# Real discovery documents, key sets and CRLs are a few kB; a megabyte is generous and still bounded.
DEFAULT_MAX_BYTES = 1024 * 1024

# Who is told how long each outgoing call took: ``(peer, seconds, outcome)``. ``broker.monitoring`` listens
# (the IdP, key-fetch and webhook latency and error metrics); the list is empty unless an app is serving.
Observer = Callable[[str, float, str], None]
_observers: list[Observer] = []


def observe_calls(observer: Observer) -> Callable[[], None]:
    """Tell ``observer`` about every outgoing call from now on; returns the function that stops it."""
    _observers.append(observer)
    return lambda: _observers.remove(observer) if observer in _observers else None


def report_call(peer: str, seconds: float, outcome: str) -> None:
    """Report one outgoing call (also for calls a library makes itself, such as Authlib's token request)."""
    for observer in list(_observers):
        observer(peer, seconds, outcome)


class UpstreamUnavailable(ServiceUnavailable):
    """The peer could not be reached, timed out, or failed TLS verification."""

    default_message = "A service the broker depends on is not answering. Try again in a minute."
    default_retry_after = 30

    def __init__(self, message: str | None = None, *, reason: str | None = None, failure: str = "") -> None:
        super().__init__(message, reason=reason)
        # The transport's name for what went wrong (``ConnectError``, ``ReadTimeout``): never the URL.
        self.failure = failure


class UpstreamTooLarge(UpstreamError):
    """The peer's answer is larger than the caller allows."""

    default_message = "A service the broker depends on sent an answer larger than allowed."


@dataclass(frozen=True)
class HttpPolicy:
    """Timeouts, size cap, TLS trust and redirects for one kind of outgoing request."""

    connect_seconds: float = DEFAULT_CONNECT_SECONDS
    read_seconds: float = DEFAULT_READ_SECONDS
    max_bytes: int = DEFAULT_MAX_BYTES
    # A PEM bundle of the CAs to trust instead of the system's; None uses the system trust store.
    ca_bundle: str | None = None
    follow_redirects: bool = False
    # Read HTTP(S)_PROXY and SSL_CERT_FILE from the environment: only for peers an operator may reach through
    # a proxy (webhooks, the AWS console endpoint, an IdP); key fetches never do.
    trust_env: bool = False
    # What kind of peer this is, for the latency and error metrics (``oidc``, ``jwks``, ``webhook`` ...).
    peer: str = "other"

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.read_seconds, connect=self.connect_seconds)

    def verify(self) -> ssl.SSLContext | bool:
        """The configured CA bundle, or True for the system trust store (certifi's, as httpx ships it)."""
        return ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else True

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for an httpx-based client another library builds itself (Authlib's OAuth2Client).

        Plain values only (the timeout as a (connect, read, write, pool) tuple): Authlib drives httpx2 when
        it is installed and httpx otherwise, and each has its own Timeout class.
        """
        return {
            "timeout": (self.connect_seconds, self.read_seconds, self.read_seconds, self.connect_seconds),
            "verify": self.verify(),
            "follow_redirects": self.follow_redirects,
            "trust_env": self.trust_env,
        }


@dataclass(frozen=True)
class Response:
    """A complete response whose body is within the cap."""

    status: int
    body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not."""
        return json.loads(self.body)


def _transport_errors() -> tuple[type[Exception], ...]:
    """What an httpx-based library raises when the transport fails: Authlib prefers httpx2 when installed."""
    try:
        import httpx2
    except ImportError:
        return (httpx.HTTPError,)
    return (httpx.HTTPError, httpx2.HTTPError)


TRANSPORT_ERRORS = _transport_errors()


class HttpClient:
    """A pooled, thread-safe client with one :class:`HttpPolicy`; per-request overrides narrow it."""

    def __init__(self, policy: HttpPolicy | None = None) -> None:
        self.policy = policy or HttpPolicy()
        self._client = httpx.Client(**self.policy.client_options())

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send one request and read its body up to ``max_bytes`` (the policy's cap when None).

        ``timeout`` narrows the read timeout for this request (connect keeps the policy's).
        """
        cap = self.policy.max_bytes if max_bytes is None else max_bytes
        limit = (
            self.policy.timeout()
            if timeout is None
            else httpx.Timeout(timeout, connect=min(timeout, self.policy.connect_seconds))
        )
        started, outcome = time.perf_counter(), "ok"
        try:
            with self._client.stream(
                method, url, params=params, headers=headers, json=json_body, timeout=limit
            ) as response:
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > cap:
                    outcome = "too_large"
                    raise UpstreamTooLarge(reason="http.too_large")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > cap:
                        outcome = "too_large"
                        raise UpstreamTooLarge(reason="http.too_large")
                outcome = status_outcome(response.status_code)
                return Response(response.status_code, bytes(body), dict(response.headers))
        except httpx.HTTPError as exc:
            outcome = _kind(exc)
            raise UpstreamUnavailable(reason=f"http.{outcome}", failure=type(exc).__name__) from None
        finally:
            report_call(self.policy.peer, time.perf_counter() - started, outcome)

    def get(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> Response:
        return self.request("GET", url, params=params, headers=headers, max_bytes=max_bytes, timeout=timeout)

    def post_json(self, url: str, payload: Any, *, max_bytes: int | None = None) -> Response:
        return self.request("POST", url, json_body=payload, max_bytes=max_bytes)


def status_outcome(status: int) -> str:
    """``ok`` for an answer below 400, else its class (``status_4xx``, ``status_5xx``)."""
    return "ok" if status < 400 else f"status_{status // 100}xx"


def _kind(exc: httpx.HTTPError) -> str:
    """A short, secret-free name for a transport failure (never the URL, which may carry a credential)."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect_failed"
    return "transport_failed"
