"""``broker serve --workers 2`` as an operator runs it, for the observability tests: JSON logs, Redis-shared
rate limits reached through a :class:`~tests.support.tcp_proxy.TcpProxy` (so a test can take Redis away and
bring it back), and loopback as the trusted proxy (``X-Forwarded-For`` names the client)."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import base_config
from tests.support.broker_process import BrokerProcess, migrate, write_config
from tests.support.saml_idp import make_keypair
from tests.support.tcp_proxy import TcpProxy

REDIS_PORT = 6379
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


@dataclass
class Observed:
    server: BrokerProcess
    redis: TcpProxy

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        # A fresh connection per request: the kernel hands each to whichever worker accepts first.
        with httpx.Client(timeout=30, verify=False) as client:  # a test certificate when served over TLS
            return client.get(f"{self.url}{path}", **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        with httpx.Client(timeout=30, verify=False) as client:
            return client.post(f"{self.url}{path}", **kwargs)

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {"name{labels}": value}."""
        response = self.get("/metrics")
        assert response.status_code == 200
        return parse_metrics(response.text)


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, line
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def metric_names(text: str) -> set[str]:
    """Every sample name /metrics exposes (``_bucket``/``_count``/``_sum``/``_total`` included)."""
    return {name.split("{", 1)[0] for name in parse_metrics(text)}


def log_lines(output: str) -> list[dict[str, Any]]:
    """Every line the server wrote, parsed as JSON (fails on the first line that is not)."""
    lines = []
    for line in output.splitlines():
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AssertionError(f"not a JSON line: {line!r}") from exc
    return lines


def wait_for(condition: Any, *, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@contextmanager
def observed_broker(tmp_path: Path, sts_endpoint: str, *, tls: bool = False, **overrides: Any) -> Iterator[Observed]:
    server: dict[str, Any] = {"forwarded_allow_ips": ["127.0.0.1/32"]}
    if tls:
        key, cert = make_keypair("127.0.0.1")
        (tmp_path / "tls.key").write_bytes(key)
        (tmp_path / "tls.crt").write_bytes(cert)
        server.update(tls_cert_file=str(tmp_path / "tls.crt"), tls_key_file=str(tmp_path / "tls.key"))
    with TcpProxy(REDIS_PORT) as redis:
        data = base_config(
            f"sqlite:///{tmp_path / 'broker.db'}",
            sts_endpoint,
            secret_key=secrets.token_urlsafe(40),
            log_json=True,
            rate_limits={"storage_url": f"redis://127.0.0.1:{redis.port}", "limits": {"token.ip": "3/hour"}},
            server=server,
            **overrides,
        )
        path = write_config(tmp_path / "broker.yaml", data)
        migrate(path)
        with BrokerProcess(path, workers=2, scheme="https" if tls else "http") as process:
            yield Observed(process, redis)
