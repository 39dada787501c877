"""SAML sign-in end to end over HTTP: the broker on a socket, the pysaml2 IdP on another, moto's STS, the
console stand-in, SQLite and PostgreSQL. The client follows every hop a browser would, forms included."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from sqlalchemy import select

from broker.store.db import Database
from broker.store.models import AuditEvent, Issuance
from tests.support.federation_standin import FederationStandIn
from tests.support.saml_broker import AC_PHISHING_RESISTANT, USERS, SamlRig
from tests.support.saml_idp import AC_MFA

_INPUT = re.compile(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"')
_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')


def form_of(page: str) -> tuple[str, dict[str, str]]:
    action = _ACTION.search(page)
    assert action is not None, page[:500]
    return html.unescape(action.group(1)), {n: html.unescape(v) for n, v in _INPUT.findall(page)}


@pytest.fixture
def standin(sts_endpoint: str) -> Iterator[FederationStandIn]:
    with FederationStandIn(sts_endpoint) as s:
        yield s


@pytest.fixture
def config(make_config: Callable[..., dict[str, Any]], standin: FederationStandIn) -> dict[str, Any]:
    config = make_config()
    config["aws"]["federation_endpoint"] = standin.url
    return config


def sign_in_at_idp(client: httpx.Client, idp_url: str, username: str) -> httpx.Response:
    """From the broker's redirect to the IdP, through its login form, back to the broker's ACS."""
    login_page = client.get(idp_url)
    assert login_page.status_code == 200
    action, fields = form_of(login_page.text)
    fields.update(username=username, password=USERS[username]["password"])
    posted = client.post(urljoin(idp_url, action), data=fields)
    assert posted.status_code == 200, posted.text
    acs, fields = form_of(posted.text)
    assert set(fields) == {"SAMLResponse"}
    return client.post(acs, data=fields)


def events(database: Database, event: str) -> list[AuditEvent]:
    with database.transaction() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.event == event).order_by(AuditEvent.seq)))


def test_sign_in_and_open_the_console(config: dict[str, Any], database: Database, standin: FederationStandIn) -> None:
    with SamlRig(config) as rig, rig.client() as client:
        # The sign-in page sends a single-IdP broker straight to the SAML start, which redirects to the IdP.
        first = client.get("/login", params={"next": "/"})
        assert first.status_code == 303 and first.headers["location"] == "/saml/corp/login?next=/"
        start = client.get(first.headers["location"])
        assert start.status_code == 303 and start.headers["location"].startswith(rig.idp_server.sso_url + "?")
        assert "SameSite=lax" in start.headers["set-cookie"] or "samesite=lax" in start.headers["set-cookie"].lower()

        back = sign_in_at_idp(client, start.headers["location"], "alice")
        assert back.status_code == 303 and back.headers["location"] == "/"
        portal = client.get("/")
        assert portal.status_code == 200 and "alice@corp.example" in portal.text
        csrf = portal.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        console = client.post("/console", data={"role": "readonly", "csrf": csrf, "duration": "900"})
        assert console.status_code == 303 and console.headers["location"].startswith(standin.url)
        landed = httpx.get(console.headers["location"])
        assert landed.status_code == 200

    assert [landing.arn.split("/")[1] for landing in standin.logins] == ["ReadOnly"]
    (login,) = events(database, "login")
    assert (login.outcome, login.reason, login.principal, login.store) == (
        "ok",
        "authenticated",
        "alice@corp.example",
        "corp",
    )
    assert login.detail["mfa"] == "mfa" and login.detail["authn_context"] == [AC_MFA]
    assert login.detail["assertion_id_ref"].startswith("hmac:")  # the assertion ID is never stored in clear
    with database.transaction() as s:
        (issuance,) = s.scalars(select(Issuance)).all()
        assert issuance.role_name == "readonly" and issuance.channel == "console"


def test_step_up_requests_a_stronger_context_and_unlocks_the_role(
    config: dict[str, Any], database: Database, standin: FederationStandIn
) -> None:
    with SamlRig(config) as rig, rig.client() as client:
        assert sign_in_at_idp(client, rig.begin(client).location, "alice").status_code == 303
        portal = client.get("/")
        assert 'href="/saml/corp/login?level=phishing_resistant' in portal.text  # the way to step up

        started = rig.begin(client, level="phishing_resistant")
        assert started.request.requested_authn_context == [AC_PHISHING_RESISTANT]
        assert sign_in_at_idp(client, started.location, "alice").status_code == 303
        assert rig.idp_server.issued[-1].authn_context_class_ref == AC_PHISHING_RESISTANT
        portal = client.get("/")
        csrf = portal.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        console = client.post("/console", data={"role": "admin", "csrf": csrf})
        assert console.status_code == 303, console.text
        assert httpx.get(console.headers["location"]).status_code == 200
    assert [e.detail["mfa"] for e in events(database, "login")] == ["mfa", "phishing_resistant"]
    assert [landing.arn.split("/")[1] for landing in standin.logins] == ["Admin"]


def test_idp_that_cannot_satisfy_the_step_up_gets_a_clear_refusal(
    config: dict[str, Any], database: Database, standin: FederationStandIn
) -> None:
    """bob has no stronger factor: the IdP answers NoAuthnContext, the broker shows why and audits it."""
    with SamlRig(config) as rig, rig.client() as client:
        reply = sign_in_at_idp(client, rig.begin(client, level="mfa").location, "bob")
        assert reply.status_code == 401 and 'role="alert"' in reply.text
    (login,) = events(database, "login")
    assert (login.outcome, login.reason) == ("denied", "saml.idp_status")
    assert "NoAuthnContext" in login.detail["saml_error"]
    assert standin.token_requests == 0


def test_metadata_describes_the_sp_from_configuration_not_the_host_header(config: dict[str, Any]) -> None:
    with SamlRig(config) as rig, rig.client() as client:
        reply = client.get("/saml/corp/metadata", headers={"Host": "evil.example"})
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("application/samlmetadata+xml")
        assert f'entityID="{rig.entity_id}"' in reply.text
        assert f'Location="{rig.acs_url}"' in reply.text and "evil.example" not in reply.text
        assert 'WantAssertionsSigned="true"' in reply.text
        assert client.get("/saml/nope/metadata").status_code == 404


def test_login_page_links_each_store_to_its_start(config: dict[str, Any]) -> None:
    with SamlRig(config, extra_stores=[{"type": "local", "name": "breakglass"}]) as rig, rig.client() as client:
        page = client.get("/login", params={"next": "/device"})
    assert page.status_code == 200
    assert 'href="/saml/corp/login?next=/device"' in page.text and 'action="/login/local/breakglass"' in page.text


def test_next_path_survives_the_round_trip_but_never_leaves_the_broker(config: dict[str, Any]) -> None:
    with SamlRig(config) as rig, rig.client() as client:
        back = sign_in_at_idp(client, rig.begin(client, next_path="/device?user_code=ABCD").location, "alice")
        assert back.headers["location"] == "/device?user_code=ABCD"
    with SamlRig(config) as rig, rig.client() as client:
        back = sign_in_at_idp(client, rig.begin(client, next_path="https://evil.example/").location, "alice")
        assert back.headers["location"] == "/"


def test_signing_in_ends_the_browsers_earlier_session(config: dict[str, Any], database: Database) -> None:
    """As after an OIDC or break-glass sign-in: the session this browser held before (its own, or one planted
    by someone else) ends; it never stays signed in beside the new one."""
    with SamlRig(config) as rig, rig.client() as client:
        assert sign_in_at_idp(client, rig.begin(client).location, "alice").status_code == 303
        earlier = client.cookies.get("broker_session")
        assert earlier
        back = sign_in_at_idp(client, rig.begin(client).location, "bob")
        later = back.cookies.get("broker_session")
        assert back.status_code == 303 and later and later != earlier
        with httpx.Client(base_url=rig.url, cookies={"broker_session": earlier}) as planted:
            assert planted.get("/", headers={"Accept": "application/json"}).status_code == 401
        with httpx.Client(base_url=rig.url, cookies={"broker_session": later}) as current:
            assert "bob@corp.example" in current.get("/", headers={"Accept": "text/html"}).text
