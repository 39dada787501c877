"""Just-in-time access from the portal's own pages (``/`` and ``/requests``), over real HTTP.

People sign in through the real OIDC provider (``tests/support/oidc_provider.py``); a phishing-resistant
session is an account whose ID token carries ``amr: ["hwk"]`` (RFC 8176), mapped by the store's ``amr`` table.
Credentials come from moto's STS. Forms are posted the way a browser posts them (``Accept: text/html``,
form-encoded, the page's CSRF field), so refusals come back as the error page.
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest

from broker.app import create_app
from broker.settings import load_settings
from tests.support.oidc_flow import (
    Running,
    callback_url,
    people,
    provider_config,
    store_config,
)
from tests.support.oidc_provider import OidcProvider, login_over_http
from tests.support.portal import csrf_from, env_credentials
from tests.support.processes import LiveServer, free_port

HTML = {"accept": "text/html"}
HWK = ["pwd", "hwk"]
MFA = ["pwd", "mfa"]
ACCOUNTS: dict[str, Any] = {
    "eng": {"groups": ["engineering"], "amr": HWK},  # eligible to ask, approves nothing
    "lead": {"groups": ["leads", "engineering"], "amr": HWK},  # approver (and eligible to ask)
    "softlead": {"groups": ["leads"], "amr": MFA},  # approver without a security key
}


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[OidcProvider, int]]:
    port = free_port()
    broker_url = f"http://127.0.0.1:{port}"
    with OidcProvider() as op:
        op.start(provider_config(broker_url, "corp", accounts=people(ACCOUNTS)))
        yield op, port


@pytest.fixture
def broker(provider: tuple[OidcProvider, int], make_config: Any) -> Iterator[Running]:
    op, port = provider
    config = make_config(identity_stores=[store_config("corp", op.issuer)])
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
    with httpx.Client(base_url=broker.url, timeout=20, headers=HTML) as client:
        start = client.get("/login/corp", params={"next": "/"})
        assert start.status_code == 303, start.text
        answer = client.get(callback_url(login_over_http(client, start.headers["location"], user, f"{user}-pw")))
        assert answer.status_code == 303, answer.text
        yield client


def role_item(page: str, role: str) -> str:
    """The portal's ``<li>`` for one role."""
    match = re.search(rf'<li class="role" data-role="{re.escape(role)}">(.*?)</li>', page, re.S)
    assert match, f"role {role} not on the page"
    return match.group(1)


def request_row(page: str, request_id: int) -> str:
    match = re.search(rf'<(tr|li)[^>]*data-request="{request_id}"[^>]*>(.*?)</\1>', page, re.S)
    assert match, f"request {request_id} not on the page"
    return match.group(2)


def text(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def events(broker: Running, before: int) -> list[tuple[str, str, str]]:
    # Alerts are the monitor's reading of the trail, written by the background worker when it gets to them.
    return [(e.event, e.outcome, e.reason) for e in broker.audit(after=before) if e.event != "alert"]


def ask(client: httpx.Client, role: str, reason: str, duration: str = "1800") -> httpx.Response:
    portal = client.get("/")
    data = {"csrf": csrf_from(portal.text), "role": role, "reason": reason, "duration": duration}
    return client.post("/requests", data=data)


def test_request_approve_and_use_from_the_portal(broker: Running, sts_endpoint: str) -> None:
    with signed_in(broker, "eng") as eng, signed_in(broker, "lead") as lead:
        # Eligible, no window: a labelled reason and a duration capped at the request cap, no credentials buttons.
        portal = eng.get("/")
        assert portal.status_code == 200
        item = role_item(portal.text, "prod-admin")
        assert "Request access" in item and 'action="/requests"' in item
        assert '<label for="reason-prod-admin">Reason</label>' in item and " required " in item
        assert re.findall(r'<option value="(\d+)"', item) == ["900", "1800", "3600"]
        assert "Get CLI credentials" not in item and "Open console" not in item
        assert "Get CLI credentials" in role_item(portal.text, "readonly")  # standing roles are unchanged
        assert 'href="/requests"' not in portal.text.split("<main", 1)[0]  # nothing to follow yet

        before = broker.last_seq()
        created = ask(eng, "prod-admin", "INC-9 hotfix for payments")
        assert created.status_code == 303 and created.headers["location"] == "/requests"
        assert events(broker, before) == [("access_request", "ok", "requested")]

        portal = eng.get("/")
        assert "is waiting for approval" in role_item(portal.text, "prod-admin")
        assert 'href="/requests"' in portal.text.split("<main", 1)[0]  # the header links the page now
        mine = eng.get("/requests")
        assert mine.headers["cache-control"] == "no-store"
        request_id = int(re.findall(r'data-request="(\d+)"', mine.text)[0])
        row = text(request_row(mine.text, request_id))
        assert "prod-admin" in row and "Waiting for approval" in row and "INC-9 hotfix" in row and "Cancel" in row
        assert "Waiting for your approval" not in mine.text  # eng approves nothing

        # The lead (someone else, security-key sign-in) sees it and approves it from the page.
        queue = lead.get("/requests")
        assert "Waiting for your approval" in queue.text
        waiting = text(request_row(queue.text, request_id))
        assert "eng@example.test asks for prod-admin" in waiting and "INC-9 hotfix" in waiting
        before = broker.last_seq()
        approved = lead.post(
            f"/requests/{request_id}/approve", data={"csrf": csrf_from(queue.text), "note": "go ahead"}
        )
        assert approved.status_code == 303, approved.text
        assert events(broker, before) == [("access_request", "ok", "approved")]
        assert f'data-request="{request_id}"' not in lead.get("/requests").text

        # The requester's portal now offers the role, with the window's end.
        portal = eng.get("/")
        item = role_item(portal.text, "prod-admin")
        assert re.search(r"Access until \d\d:\d\d UTC", item), item
        assert "Get CLI credentials" in item and "Request access" not in item
        page = eng.post("/credentials", data={"csrf": csrf_from(portal.text), "role": "prod-admin", "duration": "900"})
        assert page.status_code == 200, page.text
        env = env_credentials(page.text)
        caller = boto3.client(
            "sts",
            endpoint_url=sts_endpoint,
            region_name="us-east-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=env["AWS_SESSION_TOKEN"],
        ).get_caller_identity()
        assert ":assumed-role/ProdAdmin/" in caller["Arn"]

        # "End now" closes the window; the portal offers a new request again.
        mine = eng.get("/requests")
        row = text(request_row(mine.text, request_id))
        assert "Approved" in row and "by lead@example.test" in row and "End now" in row
        ended = eng.post(f"/requests/{request_id}/cancel", data={"csrf": csrf_from(mine.text)})
        assert ended.status_code == 303, ended.text
        assert "Ended" in text(request_row(eng.get("/requests").text, request_id))
        assert "Request access" in role_item(eng.get("/").text, "prod-admin")

        # A pending request can be withdrawn the same way.
        assert ask(eng, "prod-admin", "INC-10").status_code == 303
        mine = eng.get("/requests")
        second = max(int(i) for i in re.findall(r'data-request="(\d+)"', mine.text))
        assert eng.post(f"/requests/{second}/cancel", data={"csrf": csrf_from(mine.text)}).status_code == 303
        assert "Withdrawn" in text(request_row(eng.get("/requests").text, second))


def test_refusals_are_clear_pages_with_one_audit_event(broker: Running) -> None:
    with signed_in(broker, "eng") as eng, signed_in(broker, "lead") as lead, signed_in(broker, "softlead") as soft:
        # Nobody approves their own request: the lead asks, then tries to approve it.
        assert ask(lead, "prod-admin", "INC-11 database failover").status_code == 303
        queue = lead.get("/requests")
        request_id = int(re.findall(r'data-request="(\d+)"', queue.text)[0])
        assert "Nothing is waiting for you." in queue.text  # one's own request is not offered for approval
        before = broker.last_seq()
        own = lead.post(f"/requests/{request_id}/approve", data={"csrf": csrf_from(queue.text)})
        assert own.status_code == 403 and own.headers["content-type"].startswith("text/html")
        assert "You cannot approve or deny your own request." in own.text and "access_denied" in own.text
        assert events(broker, before) == [("access_request", "denied", "self_approval")]

        # An approver without a phishing-resistant sign-in is told so before trying, and refused if they try.
        queue = soft.get("/requests")
        assert "needs a phishing-resistant sign-in" in queue.text
        assert "lead@example.test asks for prod-admin" in text(request_row(queue.text, request_id))
        before = broker.last_seq()
        weak = soft.post(f"/requests/{request_id}/approve", data={"csrf": csrf_from(queue.text)})
        assert weak.status_code == 403 and "Approving needs a phishing-resistant sign-in." in weak.text
        assert events(broker, before) == [("access_request", "denied", "approver_mfa_insufficient")]

        # Someone who approves nothing cannot answer by posting the form anyway.
        csrf = csrf_from(eng.get("/").text)
        before = broker.last_seq()
        stranger = eng.post(f"/requests/{request_id}/deny", data={"csrf": csrf})
        assert stranger.status_code == 403 and "You are not an approver for this role." in stranger.text
        assert events(broker, before) == [("access_request", "denied", "not_an_approver")]

        # A request without a reason is refused by the use case (the field is required in the form too).
        for form in ({"reason": "  "}, {}):
            before = broker.last_seq()
            blank = eng.post("/requests", data={"csrf": csrf, "role": "prod-admin", "duration": "900", **form})
            assert blank.status_code == 400 and "Say why you need the role" in blank.text
            assert "invalid_request" in blank.text
            assert events(broker, before) == [("access_request", "denied", "request_reason_invalid")]

        # A form from elsewhere (no or a wrong CSRF token) changes nothing.
        before = broker.last_seq()
        forged = eng.post("/requests", data={"csrf": "forged", "role": "prod-admin", "reason": "x"})
        assert forged.status_code == 403 and "did not come from this site" in forged.text
        assert events(broker, before) == [("access_request", "denied", "csrf_failed")]
        before = broker.last_seq()
        forged = lead.post(f"/requests/{request_id}/cancel", data={})
        assert forged.status_code == 403 and "csrf_failed" in forged.text
        assert events(broker, before) == [("access_request", "denied", "csrf_failed")]

        # None of it created a request for eng, and the lead's request is still waiting.
        assert "You have not requested any role." in eng.get("/requests").text
        assert "Waiting for approval" in text(request_row(lead.get("/requests").text, request_id))
