"""In headless Chromium, as a person does it: the e-mail address first, then straight to the right sign-in
(oidc-provider's page with the address filled in, or the directory form), refusals announced and focused.

Real peers: the broker on a real socket, npm oidc-provider, Debian's slapd over LDAPS, moto's STS. The browser
enforces the broker's Content-Security-Policy, so a form redirect to an origin ``form-action`` does not allow
fails here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from broker.app import create_app
from broker.settings import load_settings
from tests.support.cli_broker import local_store
from tests.support.oidc_flow import ACCOUNTS, provider_config, store_config
from tests.support.oidc_provider import OidcProvider
from tests.support.processes import LiveServer, free_port
from tests.support.records import Records
from tests.support.slapd import PASSWORDS, DirectoryPeer, running_directory


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DirectoryPeer]:
    with running_directory(tmp_path_factory.mktemp("ldap")) as peer:
        yield peer


@pytest.fixture(scope="module")
def broker_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def idp(broker_port: int) -> Iterator[OidcProvider]:
    with OidcProvider() as provider:
        provider.start(provider_config(f"http://127.0.0.1:{broker_port}", "corp"))
        yield provider


class Running(Records):
    def __init__(self, url: str, db_url: str) -> None:
        self.url, self.db_url = url, db_url


@pytest.fixture
def broker(
    make_config: Callable[..., dict[str, Any]],
    db_url: str,
    broker_port: int,
    directory: DirectoryPeer,
    idp: OidcProvider,
) -> Iterator[Running]:
    config = make_config(
        identity_stores=[
            {**store_config("corp", idp.issuer), "domains": ["example.test"]},
            directory.store("dir", domains=["example.com"]),
            local_store(),
        ],
        discovery={"enabled": True},
    )
    config["public_url"] = f"http://127.0.0.1:{broker_port}"
    with LiveServer(create_app(load_settings(None, **config)), port=broker_port):
        yield Running(f"http://127.0.0.1:{broker_port}", db_url)


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context()
    errors: list[str] = []
    page = context.new_page()
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors


def enter_address(page: Page, broker: Running, address: str) -> None:
    page.goto(broker.url + "/login")
    field = page.get_by_label("Work e-mail address")
    expect(field).to_be_focused()
    field.fill(address)
    # Keyboard only: Enter submits.
    page.keyboard.press("Enter")


def test_company_address_goes_to_the_idp_with_the_address_filled_in(
    broker: Running, idp: OidcProvider, page: Page
) -> None:
    enter_address(page, broker, "alice@example.test")
    page.wait_for_url(f"{idp.issuer}/**")
    expect(page.get_by_label("Username")).to_have_value("alice@example.test")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(ACCOUNTS["alice"]["password"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{broker.url}/")
    expect(page.get_by_role("heading", name="Your AWS access")).to_be_visible()
    [login] = [e for e in broker.audit() if e.event == "login"]
    assert (login.outcome, login.store, login.principal) == ("ok", "corp", "alice@example.test")


def test_directory_address_goes_to_the_directory_form_and_refusals_are_announced(broker: Running, page: Page) -> None:
    enter_address(page, broker, "alice@example.com")
    page.wait_for_url(f"{broker.url}/login/ldap/dir?**")
    expect(page.get_by_role("heading", name="Sign in with Example directory")).to_be_visible()
    expect(page.get_by_label("Username or e-mail address")).to_have_value("alice@example.com")
    password = page.get_by_label("Password")
    # The username is known, so the password field has the focus.
    expect(password).to_be_focused()
    password.fill("not-her-password")
    page.keyboard.press("Enter")

    expect(page.get_by_role("alert")).to_contain_text("Sign-in failed. Check your details and try again.")
    password = page.get_by_label("Password")
    expect(password).to_have_attribute("aria-invalid", "true")
    expect(password).to_be_focused()
    expect(page.get_by_label("Username or e-mail address")).to_have_value("alice@example.com")
    password.fill(PASSWORDS["alice"])
    page.get_by_role("button", name="Sign in").click()

    page.wait_for_url(f"{broker.url}/")
    expect(page.get_by_role("heading", name="Your AWS access")).to_be_visible()
    # A password alone does not meet the roles' MFA: the portal says what each needs.
    expect(page.locator('li[data-role="readonly"]')).to_contain_text("needs mfa sign-in")
    logins = [(e.outcome, e.reason, e.store) for e in broker.audit() if e.event == "login"]
    assert logins == [("denied", "ldap.password_invalid", "dir"), ("ok", "authenticated", "dir")]


def test_an_unknown_domain_is_announced_and_the_field_keeps_focus(broker: Running, page: Page) -> None:
    enter_address(page, broker, "someone@elsewhere.example")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Sign-in for addresses at elsewhere.example is not set up on this broker.")
    field = page.get_by_label("Work e-mail address")
    expect(field).to_be_focused()
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_have_value("someone@elsewhere.example")
    # The list of every way in (break-glass included) is one link away.
    page.get_by_role("link", name="Choose how to sign in from a list").click()
    expect(page.get_by_role("heading", name="Break-glass account")).to_be_visible()
    [event] = [e for e in broker.audit() if e.event == "login.discovery"]
    assert (event.outcome, event.reason, event.detail["domain"]) == (
        "denied",
        "discovery.domain_unknown",
        "elsewhere.example",
    )
