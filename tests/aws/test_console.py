"""The console federation client against a real HTTP peer on loopback: the answer is size-capped and a dead
endpoint is a 503 with Retry-After, never a hang."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from broker.aws.console import MAX_RESPONSE_BYTES, signin_url
from broker.errors import ServiceUnavailable, UpstreamError
from broker.identity import Credentials
from tests.support.loopback import LoopbackServer

CREDENTIALS = Credentials("ASIAEXAMPLE", "secret-part", "token-part", datetime(2030, 1, 1, tzinfo=UTC))


@pytest.fixture
def federation() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


def url(server: LoopbackServer) -> str:
    return signin_url(
        CREDENTIALS,
        endpoint=server.url + "/federation",
        destination="https://console.aws.amazon.com/",
        issuer="https://broker.test",
        session_duration=3600,
        timeout=2,
    )


def test_the_sign_in_token_becomes_the_login_url(federation: LoopbackServer) -> None:
    def route(path: str) -> tuple[int, bytes]:
        return (200, json.dumps({"SigninToken": "tok-1"}).encode()) if path.startswith("/federation?") else (404, b"")

    federation.routes = _Prefix(route)
    login = urlsplit(url(federation))
    assert parse_qs(login.query)["SigninToken"] == ["tok-1"]
    method, path = federation.hits[0]
    sent = parse_qs(urlsplit(path).query)
    assert method == "GET" and json.loads(sent["Session"][0])["sessionKey"] == "secret-part"


def test_an_oversized_answer_is_refused(federation: LoopbackServer) -> None:
    big = json.dumps({"SigninToken": "x" * (MAX_RESPONSE_BYTES + 1)}).encode()
    federation.routes = _Prefix(lambda path: (200, big))
    with pytest.raises(UpstreamError) as info:
        url(federation)
    assert info.value.reason == "federation_bad_response"


def test_an_unreachable_endpoint_is_503_with_retry_after() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ServiceUnavailable) as info:
        signin_url(
            CREDENTIALS,
            endpoint=f"http://127.0.0.1:{port}/federation",
            destination="https://console.aws.amazon.com/",
            issuer="https://broker.test",
            session_duration=None,
            timeout=2,
        )
    assert (info.value.reason, info.value.retry_after) == ("federation_unavailable", 10)


class _Prefix(dict[str, tuple[int, bytes]]):
    """Routes answered by a function of the whole path (the query string included)."""

    def __init__(self, answer: Callable[[str], tuple[int, bytes]]) -> None:
        super().__init__()
        self._answer = answer

    def get(self, path: str, default: object = None) -> tuple[int, bytes]:  # type: ignore[override]
        return self._answer(path)
