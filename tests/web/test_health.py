"""Readiness over real HTTP: a broker without AWS credentials of its own says so, and refuses issuance with
that reason (a configuration error, not an outage)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pyotp
from sqlalchemy import select

from broker.app import create_app
from broker.connectors.local import hash_password
from broker.settings import load_settings
from broker.store.db import Database
from broker.store.models import AuditEvent, Issuance
from tests.support.portal import csrf_from, login_local
from tests.support.processes import LiveServer

PASSWORD = "correct horse battery staple"
TOTP_SECRET = pyotp.random_base32()


def test_ready_when_the_broker_has_aws_credentials(make_config: Callable[..., dict[str, Any]]) -> None:
    with LiveServer(create_app(load_settings(None, **make_config()))) as server:
        reply = httpx.get(f"{server.url}/readyz")
    assert (reply.status_code, reply.json()) == (200, {"status": "ok", "detail": "ok"})


def test_no_aws_credentials_is_named_in_readyz_and_refuses_issuance_with_its_reason(
    no_aws_credentials: None, make_config: Callable[..., dict[str, Any]], database: Database
) -> None:
    account = {
        "username": "alice",
        "password_hash": hash_password(PASSWORD),
        "totp_secret": TOTP_SECRET,
        "groups": ["engineering"],
    }
    config = make_config(identity_stores=[{"type": "local", "name": "breakglass", "accounts": [account]}])
    with LiveServer(create_app(load_settings(None, **config))) as server, httpx.Client(base_url=server.url) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert (body["status"], body["aws"]) == ("unavailable", "misconfigured")
        assert body["aws_detail"].startswith("NoCredentialsError: the broker found no AWS credentials")

        code = pyotp.TOTP(TOTP_SECRET).at(time.time())
        signed_in = login_local(client, store="breakglass", username="alice", password=PASSWORD, code=code)
        assert signed_in.status_code == 303
        portal = client.get("/", headers={"Accept": "text/html"})
        refused = client.post("/credentials", data={"role": "readonly", "csrf": csrf_from(portal.text)})
    assert refused.status_code == 503
    assert refused.json()["error"] == "temporarily_unavailable"
    # Every 503 says when to look again; what is wrong is named in /readyz and the log, not here.
    assert refused.headers["retry-after"] == "60"
    assert "no AWS credentials of its own" in refused.json()["error_description"]
    with database.transaction() as s:
        assert s.scalars(select(Issuance)).all() == []
        last = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc())).first()
        assert last is not None and (last.event, last.outcome, last.reason) == (
            "credentials",
            "denied",
            "sts_no_credentials",
        )
