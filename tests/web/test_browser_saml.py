"""A real browser (Chromium via Playwright) through a SAML sign-in: the broker's sign-in page, the pysaml2
IdP's login form, the IdP's POST back to the broker's ACS, the portal, and into the console stand-in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, expect
from sqlalchemy import select

from broker.store.db import Database
from broker.store.models import AuditEvent, Issuance
from tests.support.federation_standin import FederationStandIn
from tests.support.saml_broker import USERS, SamlRig


@pytest.fixture
def standin(sts_endpoint: str) -> Iterator[FederationStandIn]:
    with FederationStandIn(sts_endpoint) as s:
        yield s


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_browser_signs_in_with_saml_and_opens_the_console(
    chromium: Browser, make_config: Callable[..., dict[str, Any]], database: Database, standin: FederationStandIn
) -> None:
    config = make_config()
    config["aws"]["federation_endpoint"] = standin.url
    with SamlRig(config, extra_stores=[{"type": "local", "name": "breakglass"}]) as rig:
        context = chromium.new_context()
        page = context.new_page()
        page.goto(f"{rig.url}/login")
        page.get_by_role("link", name="Sign in with Corp SSO").click()

        # At the IdP: its own origin, its own form.
        expect(page).to_have_title("Sign in - Test IdP")
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(USERS["alice"]["password"])
        page.get_by_role("button", name="Sign in").click()
        # The IdP's HTTP-POST binding page (no script): the person continues to the broker.
        page.get_by_role("button", name="Continue").click()

        expect(page).to_have_url(f"{rig.url}/")
        expect(page.get_by_role("heading", name="Your AWS access")).to_be_visible()
        expect(page.get_by_text("alice@corp.example")).to_be_visible()
        readonly = page.locator('li.role[data-role="readonly"]')
        readonly.get_by_role("button", name="Open console").click()

        expect(page.get_by_role("heading", name="AWS Management Console")).to_be_visible()
        assert page.url.startswith(standin.url)
        context.close()

    assert [landing.arn.split("/")[1] for landing in standin.logins] == ["ReadOnly"]
    with database.transaction() as s:
        logins = s.scalars(select(AuditEvent).where(AuditEvent.event == "login")).all()
        assert [(e.outcome, e.reason, e.principal) for e in logins] == [("ok", "authenticated", "alice@corp.example")]
        assert [i.role_name for i in s.scalars(select(Issuance))] == ["readonly"]
