"""The outgoing-HTTP owner against a real HTTP server on loopback: size caps, timeouts, redirects, TLS."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from broker.errors import ServiceUnavailable, UpstreamError
from broker.http import HttpClient, HttpPolicy, UpstreamTooLarge, UpstreamUnavailable, observe_calls
from tests.support.certificates import server_identity


class Peer:
    """A loopback server whose answers are chosen per path: sized bodies with or without Content-Length,
    a slow first byte, a redirect. Optionally over TLS with a given certificate."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # no Content-Length means "until the connection closes"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                peer.paths.append(self.path)
                if self.path.startswith("/slow"):
                    time.sleep(2)
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", "/small")
                    self.end_headers()
                    return
                size = 10 * 1024 * 1024 if "big" in self.path else 100
                self.send_response(200)
                if "declared" in self.path:
                    self.send_header("Content-Length", str(size))
                self.end_headers()
                try:
                    for _ in range(size // 1024 or 1):
                        self.wfile.write(b"x" * min(size, 1024))
                except (BrokenPipeError, ConnectionResetError):
                    peer.cut_off = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                peer.paths.append(self.path)
                self.send_response(201)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.paths: list[str] = []
        self.cut_off = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Peer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer() as server:
        yield server


@pytest.fixture
def http() -> Iterator[HttpClient]:
    with HttpClient(HttpPolicy(connect_seconds=1, read_seconds=0.5, max_bytes=64 * 1024)) as client:
        yield client


def test_a_small_answer_is_read_whole(peer: Peer, http: HttpClient) -> None:
    response = http.get(peer.url + "/small")
    assert (response.status, response.body) == (200, b"x" * 100)


@pytest.mark.parametrize("path", ["/big", "/big-declared"])
def test_an_answer_over_the_cap_is_refused_while_it_streams(peer: Peer, http: HttpClient, path: str) -> None:
    """With or without Content-Length: the body is never buffered past the cap (10 MiB sent, 64 KiB allowed)."""
    started = time.monotonic()
    with pytest.raises(UpstreamTooLarge) as info:
        http.get(peer.url + path)
    assert isinstance(info.value, UpstreamError)
    assert (info.value.status, info.value.reason) == (502, "http.too_large")
    assert time.monotonic() - started < 5


def test_a_per_request_cap_narrows_the_policy(peer: Peer, http: HttpClient) -> None:
    with pytest.raises(UpstreamTooLarge):
        http.get(peer.url + "/small", max_bytes=99)
    assert http.get(peer.url + "/small", max_bytes=100).body == b"x" * 100


def test_a_slow_peer_times_out_as_503_with_retry_after(peer: Peer, http: HttpClient) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as info:
        http.get(peer.url + "/slow")
    assert time.monotonic() - started < 1.5
    assert isinstance(info.value, ServiceUnavailable)
    assert (info.value.status, info.value.reason, info.value.failure) == (503, "http.timeout", "ReadTimeout")
    assert info.value.retry_after == 30


def test_a_closed_port_is_unavailable_and_the_error_never_names_the_url(http: HttpClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    secret_url = f"http://127.0.0.1:{port}/hooks/T000/SECRET"
    with pytest.raises(UpstreamUnavailable) as info:
        http.get(secret_url)
    assert (info.value.reason, info.value.failure) == ("http.connect_failed", "ConnectError")
    assert "SECRET" not in str(info.value) and info.value.__cause__ is None


def test_redirects_are_not_followed_unless_asked(peer: Peer, http: HttpClient) -> None:
    assert http.get(peer.url + "/redirect").status == 302
    assert peer.paths == ["/redirect"]
    with HttpClient(HttpPolicy(follow_redirects=True)) as following:
        assert following.get(peer.url + "/redirect").body == b"x" * 100


def test_post_json_sends_the_payload(peer: Peer, http: HttpClient) -> None:
    response = http.post_json(peer.url + "/hook", {"text": "hello"})
    assert response.status == 201 and response.json() == {"text": "hello"}


def test_tls_is_verified_against_the_configured_bundle(tmp_path: Path) -> None:
    """A server certificate from an unknown CA is refused; with that CA as the bundle it is accepted."""
    ca_file, cert, key = server_identity(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    with Peer(tls=server_tls) as peer:
        with HttpClient(HttpPolicy(connect_seconds=2, read_seconds=2)) as system_trust:
            with pytest.raises(UpstreamUnavailable) as info:
                system_trust.get(peer.url + "/small")
            assert info.value.failure == "ConnectError"
        with HttpClient(HttpPolicy(connect_seconds=2, read_seconds=2, ca_bundle=str(ca_file))) as pinned:
            assert pinned.get(peer.url + "/small").body == b"x" * 100


def test_every_call_is_reported_to_the_observers_with_its_peer_and_outcome(peer: Peer) -> None:
    seen: list[tuple[str, str]] = []
    stop = observe_calls(lambda name, seconds, outcome: seen.append((name, outcome)))
    try:
        with HttpClient(HttpPolicy(peer="jwks", connect_seconds=1, read_seconds=0.5, max_bytes=64 * 1024)) as client:
            client.get(peer.url + "/small")
            with pytest.raises(UpstreamTooLarge):
                client.get(peer.url + "/big")
            with pytest.raises(UpstreamUnavailable):
                client.get(peer.url + "/slow")
    finally:
        stop()
    with HttpClient(HttpPolicy(peer="jwks")) as client:
        client.get(peer.url + "/small")  # after stop(): not reported
    assert seen == [("jwks", "ok"), ("jwks", "too_large"), ("jwks", "timeout")]
