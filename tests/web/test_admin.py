"""The admin API and just-in-time requests over HTTP, signed in through the real OIDC provider.

Phishing-resistant sessions come from the provider itself: accounts whose ID token carries ``amr: ["hwk"]``
(a hardware key, RFC 8176), which the store's ``amr`` mapping counts as ``phishing_resistant``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from broker.app import create_app
from broker.settings import load_settings
from tests.support.oidc_flow import (
    Running,
    callback_url,
    csrf_of,
    people,
    provider_config,
    store_config,
)
from tests.support.oidc_provider import OidcProvider, login_over_http
from tests.support.processes import LiveServer, free_port
from tests.support.webhook_receiver import WebhookReceiver

HWK = ["pwd", "hwk"]
MFA = ["pwd", "mfa"]
ACCOUNTS: dict[str, Any] = {
    "root": {"groups": ["admins"], "amr": HWK},  # administrator, security key
    "weakadmin": {"groups": ["admins"], "amr": MFA},  # administrator, phone MFA only
    "auditor": {"groups": ["auditors"], "amr": MFA},
    "eng": {"groups": ["engineering"], "amr": HWK},  # not an administrator, strongest sign-in
    "lead": {"groups": ["leads", "engineering"], "amr": HWK},  # approver for prod-admin
}


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[OidcProvider, int]]:
    port = free_port()
    broker_url = f"http://127.0.0.1:{port}"
    with OidcProvider() as op:
        op.start(provider_config(broker_url, "corp", accounts=people(ACCOUNTS)))
        yield op, port


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def broker(provider: tuple[OidcProvider, int], make_config: Any, hook: WebhookReceiver) -> Iterator[Running]:
    op, port = provider
    config = make_config(
        identity_stores=[store_config("corp", op.issuer)],
        admin={"admin_groups": ["admins"], "auditor_groups": ["auditors"]},
        notifications={"webhook_url": hook.url},
        alerts={"worker_interval_seconds": 0.2},
    )
    config["roles"] = [
        *config["roles"],
        {
            "name": "prod-admin",
            "role_arn": "arn:aws:iam::123456789012:role/ProdAdmin",
            "grant": [{"groups": ["engineering"]}],
            "mfa": "mfa",
            "requires_request": {"approvers": ["leads"], "max_duration_seconds": 3600},
        },
    ]
    url = f"http://127.0.0.1:{port}"
    settings = load_settings(None, **{**config, "public_url": url})
    with LiveServer(create_app(settings), port=port):
        yield Running(url, config["database_url"], None)  # type: ignore[arg-type]


@contextlib.contextmanager
def signed_in(broker: Running, user: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=broker.url, timeout=20) as client:
        start = client.get("/login/corp", params={"next": "/"})
        assert start.status_code == 303, start.text
        answer = client.get(callback_url(login_over_http(client, start.headers["location"], user, f"{user}-pw")))
        assert answer.status_code == 303, answer.text
        yield client


def refusals(broker: Running, before: int) -> list[tuple[str, str, str]]:
    return [(e.event, e.outcome, e.reason) for e in broker.audit(after=before)]


def test_admin_api_refuses_non_admins_and_weaker_sign_ins(broker: Running) -> None:
    anonymous = httpx.get(f"{broker.url}/api/v1/admin/issuances")
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "login_required"

    with signed_in(broker, "eng") as eng:
        before = broker.last_seq()
        refused = eng.get("/api/v1/admin/issuances")
        assert refused.status_code == 403 and refused.json()["error"] == "access_denied"
        assert refusals(broker, before) == [("admin", "denied", "not_admin")]
        before = broker.last_seq()
        revoke = eng.post("/api/v1/admin/revocations", json={"scope": "role", "role": "readonly", "reason": "x"})
        assert revoke.status_code == 403
        assert refusals(broker, before) == [("admin", "denied", "not_admin")]

    with signed_in(broker, "weakadmin") as weak:
        assert weak.get("/api/v1/admin/issuances").status_code == 200  # reading needs MFA only
        before = broker.last_seq()
        revoke = weak.post("/api/v1/admin/revocations", json={"scope": "role", "role": "readonly", "reason": "x"})
        assert revoke.status_code == 403 and revoke.json()["error"] == "mfa_required"
        assert refusals(broker, before) == [("admin", "denied", "admin_mfa_insufficient")]

    with signed_in(broker, "auditor") as auditor:
        assert auditor.get("/api/v1/admin/audit", params={"event": "login"}).status_code == 200
        export = auditor.get("/api/v1/admin/audit/export")
        assert export.status_code == 200 and export.text.count("\n") >= 3
        before = broker.last_seq()
        assert (
            auditor.post("/api/v1/admin/principals/eng@example.test/disable", json={"reason": "x"}).status_code == 403
        )
        assert refusals(broker, before) == [("admin", "denied", "not_admin")]

    with signed_in(broker, "root") as root:
        # A cross-site form cannot send JSON: anything else is refused before any change.
        before = broker.last_seq()
        form = root.post("/api/v1/admin/revocations", data={"scope": "role", "role": "readonly", "reason": "x"})
        assert form.status_code == 400 and form.json()["error"] == "invalid_request"
        assert refusals(broker, before) == [("admin", "denied", "content_type_not_json")]
        before = broker.last_seq()
        missing = root.post("/api/v1/admin/revocations", json={"scope": "principal", "reason": "INC-1"})
        assert missing.status_code == 400
        assert refusals(broker, before) == [("admin", "denied", "revoke_target_missing")]


def test_jit_request_approval_and_admin_revocation_over_http(broker: Running, hook: WebhookReceiver) -> None:
    with signed_in(broker, "eng") as eng, signed_in(broker, "lead") as lead, signed_in(broker, "root") as root:
        created = eng.post(
            "/api/v1/access-requests", json={"role": "prod-admin", "reason": "INC-9 hotfix", "duration_seconds": 1800}
        )
        assert created.status_code == 201, created.text
        request_id = created.json()["id"]

        # The lead sees it, the requester cannot approve it, the lead can.
        pending = lead.get("/api/v1/admin/requests", params={"status": "pending"}).json()["requests"]
        assert [r["id"] for r in pending] == [request_id]
        own = eng.post(f"/api/v1/admin/requests/{request_id}/approve", json={})
        assert own.status_code == 403 and own.json()["error"] == "access_denied"
        approved = lead.post(f"/api/v1/admin/requests/{request_id}/approve", json={"note": "go"})
        assert approved.status_code == 200 and approved.json()["status"] == "approved"

        portal = eng.get("/", headers={"accept": "text/html"})
        issued = eng.post("/credentials", data={"role": "prod-admin", "csrf": csrf_of(portal.text)})
        assert issued.status_code == 200, issued.text

        [issuance] = root.get("/api/v1/admin/issuances", params={"role": "prod-admin", "live": "true"}).json()[
            "issuances"
        ]
        assert issuance["source_identity"] == "eng@example.test"
        revoked = root.post(
            "/api/v1/admin/revocations",
            json={"scope": "issuance", "issuance_id": issuance["id"], "reason": "INC-9 closed"},
        )
        assert revoked.status_code == 200, revoked.text
        body = revoked.json()
        assert body["issuances"] == [issuance["id"]]
        # Applied when the session's moto has a ProdAdmin role (another test may have made it), else recorded as not.
        aws = body["aws"]
        assert aws["applied"] + [f["role_arn"] for f in aws["failed"]] == ["arn:aws:iam::123456789012:role/ProdAdmin"]
        live = root.get("/api/v1/admin/issuances", params={"role": "prod-admin", "live": "true"}).json()
        assert live["issuances"] == []

        # Disabling ends the person's sessions everywhere.
        disabled = root.post("/api/v1/admin/principals/eng@example.test/disable", json={"reason": "offboarding"})
        assert disabled.status_code == 200 and disabled.json()["revocation"]["sessions"] >= 1
        # ... and the person's next request says why, at once (not a bare "sign in").
        after = eng.get("/api/v1/access-requests")
        assert after.status_code == 403 and after.json()["error"] == "access_denied"
        assert after.json()["error_description"].startswith("This account is disabled.")

        report = root.get("/api/v1/admin/access-report", params={"days": 7}).json()
        prod = next(r for r in report["roles"] if r["role"] == "prod-admin")
        assert prod["access"] == "just_in_time" and prod["approved_requests"] == 1
        csv = root.get("/api/v1/admin/access-report", params={"format": "csv"})
        assert csv.text.startswith("role,access,principal")

        metrics = httpx.get(f"{broker.url}/metrics").text
        assert 'broker_issuances_total{channel="cli",role="prod-admin"} 1.0' in metrics
        assert "broker_logins_total" in metrics and "broker_sts_request_seconds_bucket" in metrics

    # The background worker delivered the notifications.
    kinds = {m["event"] for m in hook.wait_for(3)}
    assert {"access_request.created", "access_request.approved", "revocation"} <= kinds


def test_policy_explain_over_http_for_auditors_only(broker: Running) -> None:
    body = {"store": "corp", "subject": "sim-1", "email": "sim@example.test", "groups": ["engineering"], "mfa": "mfa"}
    with signed_in(broker, "eng") as eng:
        before = broker.last_seq()
        refused = eng.post("/api/v1/admin/policy/explain", json=body)
        assert refused.status_code == 403 and refused.json()["error"] == "access_denied"
        assert refusals(broker, before) == [("admin", "denied", "not_admin")]
    with signed_in(broker, "auditor") as auditor:
        before = broker.last_seq()
        answer = auditor.post("/api/v1/admin/policy/explain", json=body)
        assert answer.status_code == 200, answer.text
        roles = {r["role"]: r for r in answer.json()["roles"]}
        assert roles["readonly"]["usable"] and roles["readonly"]["sts"]["source_identity"] == "sim@example.test"
        assert roles["prod-admin"]["visible"] and roles["prod-admin"]["reason"] == "request_required"
        # Reading the policy is audited like any admin read; nothing is issued.
        assert refusals(broker, before) == [("admin", "ok", "policy_explain")]
        one = auditor.post("/api/v1/admin/policy/explain", json={**body, "role": "readonly", "mfa": "none"})
        assert [r["reason"] for r in one.json()["roles"]] == ["mfa_insufficient"]
        bad = auditor.post("/api/v1/admin/policy/explain", json={**body, "mfa": "strong"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
