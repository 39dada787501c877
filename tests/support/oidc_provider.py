"""Start and drive the real OpenID Connect provider test peer.

The peer is ``tests/peers/oidc/provider.mjs``, a small wrapper around the
``oidc-provider`` npm package (a certified OpenID Provider implementation), so
the broker is tested against real protocol behaviour rather than a mock.

Config schema accepted by :meth:`OidcProvider.start` (JSON-serialisable dict)::

    {
      "port": 8123,                       # optional, default: a free port
      "issuer": "http://127.0.0.1:8123",  # optional, default: http://127.0.0.1:<port>
      "clients": [                        # oidc-provider client metadata, passed through
        {
          "client_id": "broker",
          "client_secret": "at-least-32-characters-long-secret",
          "redirect_uris": ["http://127.0.0.1:8000/callback"],
          "post_logout_redirect_uris": ["http://127.0.0.1:8000/"],
          "grant_types": ["authorization_code"],          # or ["client_credentials"]
          "response_types": ["code"],                     # [] for client_credentials
          "token_endpoint_auth_method": "client_secret_basic",
          "id_token_signed_response_alg": "RS256"         # optional; "ES256" also works
        }
      ],
      "accounts": {                       # username -> account
        "alice": {
          "password": "pw",
          "claims": {                     # sub defaults to the username,
            "sub": "u-alice",             # preferred_username too
            "email": "alice@example.test",
            "name": "Alice",
            "groups": ["admins"],
            "amr": ["pwd", "mfa"],        # -> ID token amr, verbatim
            "acr": "urn:example:mfa"      # -> ID token acr, verbatim
          },
          "step_up": {                    # optional: applied when the request's
            "acr": "urn:example:hwk",     # acr_values include this acr; the
            "amr": ["hwk"]                # amr values are appended to "amr"
          }
        }
      },
      "resource_servers": {               # optional, for client_credentials + resource
        "urn:example:api": {"audience": "urn:example:api", "scope": "read write",
                            "access_token_ttl": 600, "alg": "RS256"}
      },
      "acr_values": ["..."],              # optional extra acr_values_supported
      "claims": {"scope": ["claim", ...]} # optional extra/overriding scope -> claims
    }

Scopes map to claims as: ``openid`` -> sub, acr, amr, auth_time; ``email`` -> email, email_verified;
``profile`` -> name, preferred_username, given_name, family_name, locale,
zoneinfo; ``groups`` -> groups. Granted claims appear in the ID token and at
userinfo. Resource indicators not listed in ``resource_servers`` are accepted
with audience = the indicator and no scopes; access tokens for a resource are
always JWTs signed with the provider's key.

Provider endpoints (relative to the issuer): ``/.well-known/openid-configuration``,
``/auth``, ``/token``, ``/me`` (userinfo), ``/jwks``, ``/session/end``,
``/token/introspection``, ``/token/revocation``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from tests.support.processes import free_port

PEER_DIR = Path(__file__).resolve().parent.parent / "peers" / "oidc"
PROVIDER_SCRIPT = PEER_DIR / "provider.mjs"
READY_TIMEOUT_S = 20.0


def ensure_node_modules() -> None:
    """Install the peer's pinned npm dependencies if they are missing.

    ``npm ci`` installs exactly what ``package-lock.json`` records, so a fresh
    checkout (or CI machine) gets the same oidc-provider version every time.
    """
    if (PEER_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is required to install the OIDC test peer (tests/peers/oidc)")
    proc = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=PEER_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"npm ci failed in {PEER_DIR}:\n{proc.stdout}\n{proc.stderr}")


class OidcProvider:
    """A running ``oidc-provider`` process, usable as a context manager.

    Example::

        with OidcProvider() as op:
            op.start({"clients": [...], "accounts": {...}})
            metadata = httpx.get(op.issuer + "/.well-known/openid-configuration").json()
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._lines: list[str] = []
        self._lines_lock = threading.Lock()
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self.issuer: str = ""
        self.port: int = 0
        self.config: dict[str, Any] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def output(self) -> str:
        """Everything the provider printed so far (stdout and stderr interleaved)."""
        with self._lines_lock:
            return "".join(self._lines)

    def start(self, config: dict[str, Any]) -> Self:
        """Write ``config`` to a temp file, spawn the provider and wait for ``READY``.

        ``port`` and ``issuer`` are filled in when absent. Raises ``RuntimeError``
        with the provider's captured output if it exits or is not ready within
        20 seconds.
        """
        if self._proc is not None:
            raise RuntimeError("provider already started")
        ensure_node_modules()
        node = shutil.which("node") or "/usr/bin/node"

        cfg = dict(config)
        cfg.setdefault("port", free_port())
        cfg.setdefault("issuer", f"http://127.0.0.1:{cfg['port']}")
        self.config = cfg
        self.port = int(cfg["port"])
        self.issuer = str(cfg["issuer"])

        self._tmpdir = tempfile.TemporaryDirectory(prefix="oidc-peer-")
        cfg_path = Path(self._tmpdir.name) / "config.json"
        cfg_path.write_text(json.dumps(cfg), encoding="utf-8")

        self._proc = subprocess.Popen(
            [node, str(PROVIDER_SCRIPT), str(cfg_path)],
            cwd=PEER_DIR,
            # Never written to: the provider exits when this pipe closes, so it
            # cannot outlive a test process that dies without calling stop().
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, "NODE_ENV": "test", "OIDC_PEER_EXIT_ON_STDIN_EOF": "1"},
        )
        # Drain output continuously: a full pipe would block the provider.
        self._reader = threading.Thread(target=self._pump, name="oidc-peer-output", daemon=True)
        self._reader.start()

        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready.wait(timeout=0.05):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                reason = (
                    f"exited with code {self._proc.returncode}"
                    if self._proc.poll() is not None
                    else f"not ready after {READY_TIMEOUT_S:.0f}s"
                )
                self.stop()
                raise RuntimeError(f"OIDC provider {reason}; output:\n{self.output}")
        return self

    def _pump(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            with self._lines_lock:
                self._lines.append(line)
            if line.startswith("READY "):
                self._ready.set()

    def stop(self) -> None:
        """Terminate the provider (SIGTERM, then SIGKILL after 5 s) and clean up. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            if proc.stdin is not None:
                proc.stdin.close()
            if self._reader is not None:
                self._reader.join(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        self._reader = None
        self._ready.clear()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def metadata(self) -> dict[str, Any]:
        """Fetch and return the provider's discovery document."""
        resp = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result


class LoginError(RuntimeError):
    """The provider did not accept the login or did not redirect back to the RP."""

    def __init__(self, message: str, response: httpx.Response) -> None:
        super().__init__(f"{message} (HTTP {response.status_code} at {response.url}):\n{response.text[:2000]}")
        self.response = response


class _FormParser(HTMLParser):
    """Collects each ``<form>``'s method, action and named ``<input>`` values."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get"), "fields": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value", "")


def _redirect_target(resp: httpx.Response) -> str | None:
    if resp.status_code in (301, 302, 303, 307, 308) and "location" in resp.headers:
        return urljoin(str(resp.url), resp.headers["location"])
    return None


def _is_rp_redirect(url: str, redirect_uri: str) -> bool:
    # Compare scheme/host/port/path only: the provider appends code, state, iss.
    a, b = urlsplit(url), urlsplit(redirect_uri)
    return (a.scheme, a.netloc, a.path) == (b.scheme, b.netloc, b.path)


def login_over_http(
    client: httpx.Client,
    authorize_url: str,
    username: str,
    password: str,
    *,
    max_hops: int = 10,
) -> httpx.Response:
    """Log in at the provider like a browser would, without JavaScript.

    Starts at ``authorize_url`` (the RP's full authorization request), follows the
    provider's redirects to its login page, submits ``username``/``password`` and
    follows the provider's redirects again. Returns the response whose ``Location``
    points at the request's ``redirect_uri`` (carrying ``code``, ``state`` and
    ``iss``, or an ``error``); that redirect is not followed. If the provider
    already has a session for this client's cookies, no form is shown and the
    credentials go unused.

    Cookies are kept in ``client``, so a second call with the same client
    exercises single sign-on. Raises :class:`LoginError` on rejected credentials
    or any unexpected page.
    """
    redirect_uri = parse_qs(urlsplit(authorize_url).query).get("redirect_uri", [""])[0]
    if not redirect_uri:
        raise ValueError("authorize_url has no redirect_uri parameter")

    submitted = False
    resp = client.get(authorize_url, follow_redirects=False)
    for _ in range(max_hops):
        target = _redirect_target(resp)
        if target is not None:
            if _is_rp_redirect(target, redirect_uri):
                return resp
            resp = client.get(target, follow_redirects=False)
            continue

        if resp.status_code != 200 or submitted:
            raise LoginError("login was not accepted" if submitted else "unexpected provider response", resp)
        parser = _FormParser()
        parser.feed(resp.text)
        form = next((f for f in parser.forms if {"login", "password"} <= f["fields"].keys()), None)
        if form is None:
            raise LoginError("no login form found", resp)
        fields = {**form["fields"], "login": username, "password": password}
        resp = client.post(urljoin(str(resp.url), form["action"]), data=fields, follow_redirects=False)
        submitted = True
    raise LoginError(f"gave up after {max_hops} hops without reaching {redirect_uri}", resp)
