"""Two `broker serve` processes appending to one audit trail at once, on SQLite (one host) and PostgreSQL (the
fleet): nothing is lost, every event is sealed by the sealers running in both, and `broker audit verify` passes
with and without the signed digests, also while the load runs."""

from __future__ import annotations

import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import select

from broker.store.db import Database
from broker.store.models import AuditEvent, AuditSegment
from tests.conftest import base_config
from tests.support.broker_process import BrokerProcess, migrate, write_config
from tests.support.cli import broker
from tests.test_anchors import pem_pair, said

REQUESTS_PER_PROCESS = 60


def refused_token_request(url: str) -> str:
    """One audited refusal (a grant the broker does not offer); returns its request id."""
    request_id = uuid.uuid4().hex
    response = httpx.post(
        f"{url}/oauth2/token", data={"grant_type": "client_credentials"}, headers={"X-Request-Id": request_id}
    )
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type", response.text
    return request_id


def test_two_processes_append_concurrently(tmp_path: Path, db_url: str, sts_endpoint: str) -> None:
    private, public = pem_pair()
    (tmp_path / "anchor.pem").write_text(private)
    (tmp_path / "anchor.pub.pem").write_bytes(public)
    digests = tmp_path / "digests"
    config = base_config(
        db_url,
        sts_endpoint,
        secret_key=secrets.token_urlsafe(40),
        rate_limits={"enabled": False},
        audit={
            "seal_interval_seconds": 0.2,
            "anchor": {
                "signing_key": f"file:{tmp_path / 'anchor.pem'}",
                "directory": str(digests),
                "interval_seconds": 1,
            },
        },
    )
    path = write_config(tmp_path / "broker.yaml", config)
    migrate(path)
    sent: list[str] = []
    with BrokerProcess(path) as a, BrokerProcess(path) as b, ThreadPoolExecutor(8) as pool:
        urls = [(a.url, b.url)[i % 2] for i in range(2 * REQUESTS_PER_PROCESS)]
        half = len(urls) // 2
        sent += pool.map(refused_token_request, urls[:half])
        # Verification while both processes keep appending: unsealed events are inside the window.
        running = pool.map(refused_token_request, urls[half:])
        live = broker("audit", "verify", "-c", str(path))
        sent += running
        assert live.returncode == 0, live.stderr
    intact = broker("audit", "verify", "-c", str(path))
    assert intact.returncode == 0, intact.stderr
    assert "0 awaiting the sealer" in said(intact.stdout)
    assert f"Matches the signed digests in {digests}" in said(intact.stdout)
    public_only = broker(
        "audit", "verify", "--digests", str(digests), "--public-key", str(tmp_path / "anchor.pub.pem"), "-c", str(path)
    )
    assert public_only.returncode == 0, public_only.stderr

    database = Database(db_url)
    try:
        with database.transaction() as s:
            events = s.scalars(select(AuditEvent)).all()
            segments = s.scalars(select(AuditSegment)).all()
    finally:
        database.dispose()
    refusals = [e for e in events if e.request_id in set(sent)]
    assert sorted(e.request_id or "" for e in refusals) == sorted(sent)  # nothing lost, nothing twice
    assert all(e.segment is not None for e in events)  # the sealers integrated everything
    assert len({e.writer for e in refusals}) == 2  # both processes wrote
    assert sum(s.count for s in segments) == len(events) and len(segments) >= 2
