"""WebAuthn at the broker in headless Chromium with its CDP virtual authenticator (CTAP2, user verification).

Real peers: the broker on a real socket (public_url http://localhost:PORT, since an IP address cannot be a
WebAuthn RP ID), moto's STS, Chromium enforcing the broker's CSP (the ceremonies run from static/mfa.js).
The phishing test answers the broker's own challenge from a page on another origin, as a proxying phishing
site would, and the broker must refuse the assertion.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
import yaml
from playwright.sync_api import Browser, CDPSession, Page, expect
from sqlalchemy import select
from typer.testing import CliRunner

from broker import cli
from broker.store.db import Database
from broker.store.models import MfaFactor, Principal
from tests.mfa.conftest import BREAK_GLASS_TOTP, PASSWORD, Running, enrol_totp
from tests.mfa.conftest import sign_in as sign_in_http

PHISH = "http://localhost:9/phish"

# What a phishing page does with a challenge it relayed from the broker: ask the authenticator, serialize.
ASSERT_JS = """
async (options) => {
  const bytes = (v) => Uint8Array.from(
    atob(v.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(v.length / 4) * 4, "=")), c => c.charCodeAt(0));
  const b64 = (b) => btoa(String.fromCharCode(...new Uint8Array(b)))
    .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
  options.challenge = bytes(options.challenge);
  options.allowCredentials = options.allowCredentials.map(c => ({...c, id: bytes(c.id)}));
  const a = await navigator.credentials.get({publicKey: options});
  return {id: a.id, rawId: b64(a.rawId), type: a.type, clientExtensionResults: {}, response: {
    clientDataJSON: b64(a.response.clientDataJSON), authenticatorData: b64(a.response.authenticatorData),
    signature: b64(a.response.signature), userHandle: null}};
}
"""


AUTHENTICATORS: dict[int, tuple[CDPSession, str]] = {}


def new_authenticator(cdp: CDPSession) -> str:
    options = {
        "protocol": "ctap2",
        "transport": "internal",
        "hasResidentKey": True,
        "hasUserVerification": True,
        "isUserVerified": True,
    }
    return str(cdp.send("WebAuthn.addVirtualAuthenticator", {"options": options})["authenticatorId"])


def swap_authenticator(page: Page) -> None:
    """Replace the virtual authenticator by a new one: a second, different security key."""
    cdp, current = AUTHENTICATORS[id(page)]
    cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": current})
    AUTHENTICATORS[id(page)] = (cdp, new_authenticator(cdp))


@pytest.fixture
def page(chromium: Browser, running: Running) -> Iterator[Page]:
    context = chromium.new_context()
    errors: list[str] = []
    page = context.new_page()
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    AUTHENTICATORS[id(page)] = (cdp, new_authenticator(cdp))
    yield page
    AUTHENTICATORS.pop(id(page), None)
    context.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors


def public(running: Running) -> str:
    return running.url.replace("127.0.0.1", "localhost")


def sign_in(page: Page, running: Running) -> None:
    page.goto(public(running) + "/login")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Authenticator code").fill(pyotp.TOTP(BREAK_GLASS_TOTP).at(running.clock()))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Your AWS access")).to_be_visible()


def register_key(page: Page, running: Running, name: str) -> None:
    page.goto(public(running) + "/mfa")
    page.get_by_label("Name").first.fill(name)
    page.get_by_role("button", name="Add security key").click()
    expect(page.locator('li[data-factor="webauthn"]').filter(has_text=name)).to_have_count(1)


def test_register_then_step_up_to_a_phishing_resistant_role(page: Page, running: Running) -> None:
    sign_in(page, running)
    admin = page.locator('li[data-role="admin"]')
    # The break-glass sign-in (password + TOTP) is not phishing-resistant: the portal says so and why.
    expect(admin).to_contain_text("needs phishing-resistant sign-in")
    expect(admin.get_by_role("button", name="Get CLI credentials")).to_have_count(0)

    register_key(page, running, "laptop key")
    # A second key needs a recent broker factor first (a stolen session cannot add its own key).
    page.get_by_label("Name").first.fill("backup key")
    page.get_by_role("button", name="Add security key").click()
    expect(page.locator("#webauthn-register-status")).to_contain_text("Confirm with one of your existing factors")

    page.goto(public(running) + "/")
    admin.get_by_role("link", name="Confirm with your security key").click()
    expect(page.locator("#why")).to_contain_text("The role admin needs a phishing-resistant sign-in")
    page.get_by_role("button", name="Use security key").click()
    page.wait_for_url(public(running) + "/")
    expect(page.get_by_text("Sign-in strength: phishing-resistant")).to_be_visible()
    expect(admin).not_to_contain_text("needs phishing-resistant sign-in")
    admin.get_by_role("button", name="Get CLI credentials").click()
    expect(page.get_by_role("heading", name="Credentials for admin")).to_be_visible()
    assert running.audit("credentials")[-1].reason == "issued"

    # Now a second key (one authenticator holds one credential per RP: the backup is another key).
    swap_authenticator(page)
    register_key(page, running, "backup key")
    expect(page.locator('li[data-factor="webauthn"]')).to_have_count(2)
    with Database(running.db_url).transaction() as s:
        keys = s.scalars(select(MfaFactor).where(MfaFactor.kind == "webauthn")).all()
        assert {k.name for k in keys} == {"laptop key", "backup key"} and all(k.user_verified for k in keys)
        laptop = next(k for k in keys if k.name == "laptop key")
        assert laptop.sign_count > 0 and laptop.last_used_at is not None
    # The backup key works for a step-up too (several authenticators per user).
    page.goto(public(running) + "/mfa/verify?role=admin")
    page.get_by_role("button", name="Use security key").click()
    page.wait_for_url(public(running) + "/")

    verified = [e for e in running.audit("mfa.verify") if e.outcome == "ok"]
    assert [(e.reason, e.detail["level"]) for e in verified] == [("mfa.webauthn", "phishing_resistant")] * 2
    assert [e.reason for e in running.audit("mfa.enrol")] == ["mfa.webauthn_registered"] * 2


def test_removal(page: Page, running: Running) -> None:
    sign_in(page, running)
    register_key(page, running, "old key")
    # Removing needs a recent broker factor: refused (403, audited) until the user confirms with one.
    page.get_by_role("button", name="Remove old key").click()
    expect(page.get_by_role("alert")).to_contain_text("Confirm with one of your existing factors first")
    page.goto(public(running) + "/mfa/verify")
    page.get_by_role("button", name="Use security key").click()
    page.wait_for_url(public(running) + "/")
    page.goto(public(running) + "/mfa")
    page.get_by_role("button", name="Remove old key").click()
    page.wait_for_url(public(running) + "/mfa")
    expect(page.get_by_text("You have no factors yet")).to_be_visible()
    assert [e.reason for e in running.audit("mfa.remove")] == ["mfa.factor_removed"]


def test_assertion_made_on_another_origin_is_refused(page: Page, running: Running) -> None:
    sign_in(page, running)
    register_key(page, running, "laptop key")
    page.goto(public(running) + "/mfa/verify?role=admin")
    csrf = page.locator("#webauthn-authenticate").get_attribute("data-csrf") or ""
    headers = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
    options: dict[str, Any] = page.request.post(
        public(running) + "/api/mfa/webauthn/authenticate/options",
        headers=headers,
        data={"level": "phishing_resistant"},
    ).json()

    # The phishing site (same RP ID, another origin) gets the user to answer the relayed challenge.
    page.route(PHISH, lambda route: route.fulfill(status=200, content_type="text/html", body="<h1>Sign in</h1>"))
    page.goto(PHISH)
    answer = page.evaluate(ASSERT_JS, options)
    refused = page.request.post(public(running) + "/api/mfa/webauthn/authenticate", headers=headers, data=answer)
    assert refused.status == 401
    assert refused.json()["error"] == "authentication_failed"
    denied = [e for e in running.audit("mfa.verify") if e.outcome == "denied"]
    assert [e.reason for e in denied] == ["webauthn.origin_mismatch"]
    # The challenge was spent by that attempt; the session did not gain anything.
    again = page.request.post(public(running) + "/api/mfa/webauthn/authenticate", headers=headers, data=answer)
    assert again.status == 400
    page.goto(public(running) + "/")
    expect(page.get_by_text("Sign-in strength: mfa")).to_be_visible()


def test_operator_reset_needs_the_operators_own_phishing_resistant_sign_in(
    page: Page, running: Running, tmp_path: Path
) -> None:
    # Bob has an authenticator app (over HTTP, as his browser would).
    with httpx.Client(base_url=running.url, follow_redirects=False, timeout=30) as bob:
        sign_in_http(bob, running, "bob")
        enrol_totp(bob, running)
    # An operator asks for the reset on the server; it does nothing yet.
    config_file = tmp_path / "broker.yaml"
    config_file.write_text(yaml.safe_dump(running.config))
    result = CliRunner().invoke(cli.app, ["mfa", "reset", "--principal", "bob@example.com", "-c", str(config_file)])
    assert result.exit_code == 0, result.output
    url = re.search(r"(http://\S+/mfa/reset/\S+)", result.output)
    assert url and factors_of("bob", running) == ["totp"]

    # Alice (in admins) approves; her break-glass TOTP sign-in and a just-registered key are not enough.
    sign_in(page, running)
    register_key(page, running, "laptop key")
    page.goto(url.group(1))
    expect(page.get_by_text("remove every factor and recovery code of bob@example.com")).to_be_visible()
    page.get_by_role("button", name="Remove bob@example.com's factors").click()
    expect(page.get_by_role("alert")).to_contain_text("needs a phishing-resistant sign-in")
    assert factors_of("bob", running) == ["totp"]
    # After confirming with her security key, the approval goes through.
    page.goto(public(running) + "/mfa/verify?level=phishing_resistant")
    page.get_by_role("button", name="Use security key").click()
    page.wait_for_url(public(running) + "/")
    page.goto(url.group(1))
    page.get_by_role("button", name="Remove bob@example.com's factors").click()
    expect(page.get_by_role("status")).to_contain_text("bob@example.com was removed")
    assert factors_of("bob", running) == []
    resets = [(e.outcome, e.reason, e.principal) for e in running.audit("mfa.reset")]
    assert resets == [
        ("requested", "mfa.reset_requested", "bob@example.com"),
        ("denied", "mfa.reset_requires_phishing_resistant", "alice@example.com"),
        ("ok", "mfa.operator_reset", "alice@example.com"),
    ]
    # The request works once.
    page.goto(url.group(1))
    expect(page.get_by_role("alert")).to_contain_text("does not exist or has expired")


def factors_of(username: str, running: Running) -> list[str]:
    with Database(running.db_url).transaction() as s:
        query = select(MfaFactor.kind).join(Principal, Principal.id == MfaFactor.principal_id)
        return list(s.scalars(query.where(Principal.username == username)).all())
