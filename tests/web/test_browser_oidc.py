"""End to end in headless Chromium: the employee's everyday console sign-in, as a person does it.

Real peers only: the broker on a real socket, oidc-provider's login page, moto's STS, and the console
federation stand-in (which checks the sign-in token's credentials against STS). The browser enforces the
broker's Content-Security-Policy, so a form that posts or redirects somewhere the CSP does not allow fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.oidc_flow import ACCOUNTS, Peers, Running, running_broker, start_peers


@pytest.fixture(scope="module")
def peers() -> Iterator[Peers]:
    with start_peers() as started:
        yield started


@pytest.fixture
def broker(peers: Peers, make_config: Any, sts_endpoint: str) -> Iterator[Running]:
    # Only the company IdP: /login goes straight to it, as for most employees.
    corp = peers.stores()[0]
    with running_broker(peers, make_config(identity_stores=[corp]), sts_endpoint) as running:
        yield running


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context()
    errors: list[str] = []
    page = context.new_page()
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()
    # A CSP violation (e.g. a form redirect to an origin not in form-action) is logged as a console error.
    assert not [e for e in errors if "Content Security Policy" in e], errors


def sign_in_at_idp(page: Page, user: str) -> None:
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(ACCOUNTS[user]["password"])
    page.get_by_role("button", name="Sign in").click()


def test_sign_in_and_open_console(broker: Running, peers: Peers, page: Page) -> None:
    page.goto(broker.url + "/")
    page.wait_for_url(f"{peers.corp.issuer}/**")
    sign_in_at_idp(page, "alice")

    page.wait_for_url(f"{broker.url}/")
    expect(page.get_by_role("heading", name="Your AWS access")).to_be_visible()
    # Both roles live in one account: one section, named after the account.
    expect(page.get_by_role("heading", level=2)).to_have_text(["Account dev (123456789012)"])
    roles = page.locator("li[data-role]")
    expect(roles).to_have_count(2)
    assert sorted(roles.evaluate_all("items => items.map(i => i.dataset.role)")) == ["admin", "readonly"]

    readonly = page.locator('li[data-role="readonly"]')
    readonly.get_by_label("Duration").select_option("1800")
    # Keyboard only: focus the button and press Enter.
    readonly.get_by_role("button", name="Open console").focus()
    page.keyboard.press("Enter")

    page.wait_for_url(f"{broker.standin.url}**")
    expect(page.get_by_role("heading", name="AWS Management Console")).to_be_visible()
    expect(page.locator("#arn")).to_contain_text(":assumed-role/ReadOnly/")
    [landing] = broker.standin.logins
    assert landing.session_duration == "1800" and landing.issuer == broker.url

    [issuance] = broker.issuances()
    events = broker.audit()
    login = [e for e in events if e.event == "login"]
    credentials = [e for e in events if e.event == "credentials"]
    assert [(e.outcome, e.reason, e.store, e.principal) for e in login] == [
        ("ok", "authenticated", "corp", "alice@example.test")
    ]
    assert [(e.outcome, e.reason, e.channel) for e in credentials] == [("ok", "issued", "console")]
    detail = credentials[0].detail
    assert detail["access_key_id"] == issuance.access_key_id
    assert detail["source_identity"] == issuance.source_identity == "alice@example.test"
    assert re.fullmatch(r"[A-Z0-9]{16,128}", issuance.access_key_id)


def test_step_up_in_the_browser(broker: Running, peers: Peers, page: Page) -> None:
    page.goto(broker.url + "/")
    sign_in_at_idp(page, "alice")
    page.wait_for_url(f"{broker.url}/")

    admin = page.locator('li[data-role="admin"]')
    expect(admin).to_contain_text("your identity provider will ask you to confirm with a stronger factor first")
    admin.get_by_role("button", name="Open console").click()

    # The IdP asks again (max_age=0, acr_values=hardware key), then the broker issues straight away.
    page.wait_for_url(f"{peers.corp.issuer}/**")
    expect(page.get_by_text("urn:example:acr:hwk")).to_be_visible()
    sign_in_at_idp(page, "alice")
    page.wait_for_url(f"{broker.standin.url}**")
    expect(page.locator("#arn")).to_contain_text(":assumed-role/Admin/")
    reasons = [(e.event, e.outcome, e.reason) for e in broker.audit() if e.event != "config.loaded"]
    assert reasons == [
        ("login", "ok", "authenticated"),
        ("step_up", "started", "mfa_step_up"),
        ("login", "ok", "authenticated"),
        ("credentials", "ok", "issued"),
    ]


def test_error_page_is_readable(broker: Running, page: Page) -> None:
    page.goto(f"{broker.url}/oidc/corp/callback?code=x&state=never-issued")
    expect(page.get_by_role("heading", name="That did not work")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("Start again")
    expect(page.get_by_role("link", name="Sign in", exact=True)).to_be_visible()
