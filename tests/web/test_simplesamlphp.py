"""SimpleSAMLphp 1.19 (Debian) as the IdP, driven through Chromium as a deployer meets it: persistent and
transient NameIDs, ``urn:oid:`` attribute names, single logout in both directions, and IdP-initiated sign-in.

Peers: SimpleSAMLphp under PHP's built-in server, the broker on a loopback socket, Chromium, moto's STS, and
SQLite or PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, expect

from tests.support.simplesamlphp import OID_UID, TRANSIENT, SimpleSamlRig

CAROL = "carol@uni.example"


def logins(rig: SimpleSamlRig) -> list[tuple[str, str, str | None]]:
    return [(e.outcome, e.reason, e.principal) for e in rig.audit() if e.event == "login"]


def logouts(rig: SimpleSamlRig) -> list[tuple[str, str, str | None]]:
    return [(e.outcome, e.reason, e.principal) for e in rig.audit() if e.event == "logout"]


def at_idp_login_form(page: Page, rig: SimpleSamlRig) -> None:
    expect(page.locator('input[name="username"]')).to_be_visible()
    assert page.url.startswith(rig.idp.url)


def test_persistent_nameid_is_one_principal_and_sign_out_ends_the_idp_session_too(
    chromium: Browser, make_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    with SimpleSamlRig(make_config(), tmp_path) as rig:
        first, context = chromium.new_context(), chromium.new_context()
        for browser_context in (first, context):
            page = browser_context.new_page()
            rig.sign_in(page)
            expect(page.get_by_role("heading", name="Your AWS access")).to_be_visible()
            expect(page.get_by_text(CAROL)).to_be_visible()
        first.close()
        # SimpleSAMLphp's persistent NameID (from urn:oid uid) is the subject: one person, one principal.
        assert rig.principals() == [("carol", "carol", CAROL)]
        assert logins(rig) == [("ok", "authenticated", CAROL)] * 2

        # Sign out: a signed LogoutRequest to SimpleSAMLphp, its signed LogoutResponse back, the signed-out page.
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(f"{rig.url}/signed-out?**")
        expect(page.locator('[data-idp-session="ended"]')).to_have_text("You are signed out at University SSO as well.")
        page.wait_for_timeout(1000)
        assert page.url.startswith(f"{rig.url}/signed-out")  # and it stays there: no automatic sign-in
        assert logouts(rig) == [("ok", "user_logout", CAROL)]

        # The IdP's session ended too: signing in again asks for the password.
        page.get_by_role("link", name="Sign in again").click()
        at_idp_login_form(page, rig)
        context.close()


def test_sign_out_at_the_idp_ends_the_broker_session(
    chromium: Browser, make_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    with SimpleSamlRig(make_config(), tmp_path) as rig:
        context = chromium.new_context()
        page = context.new_page()
        rig.sign_in(page)
        expect(page.get_by_role("heading", name="Your AWS access")).to_be_visible()

        # Signing out at SimpleSAMLphp sends its signed LogoutRequest through the browser to the broker's SLO.
        page.goto(rig.idp.idp_initiated_logout_url(return_to=f"{rig.idp.url}/"))
        page.wait_for_url(f"{rig.idp.url}/**")
        page.wait_for_load_state()
        assert logouts(rig) == [("ok", "idp_logout", CAROL)]

        # The broker session is gone: the portal asks for a sign-in, which asks the IdP for a password.
        page.goto(f"{rig.url}/")
        at_idp_login_form(page, rig)
        context.close()


def test_transient_nameid_is_refused_and_says_why(
    chromium: Browser, make_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    with SimpleSamlRig(make_config(), tmp_path, name_id_format=TRANSIENT, name_id_attribute=None) as rig:
        context = chromium.new_context()
        page = context.new_page()
        rig.sign_in(page)
        expect(page.get_by_role("alert")).to_contain_text("one-time (transient) identifier")
        expect(page.get_by_role("alert")).to_contain_text("subject: attr.NAME")
        context.close()
        assert rig.principals() == []
        assert logins(rig) == [("denied", "saml.nameid_transient", None)]
        assert rig.issuances() == []


def test_transient_nameid_with_a_subject_attribute_is_one_principal(
    chromium: Browser, make_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    store = {"subject": f"attr.{OID_UID}"}
    with SimpleSamlRig(make_config(), tmp_path, store=store, name_id_format=TRANSIENT, name_id_attribute=None) as rig:
        for _ in range(2):
            context = chromium.new_context()
            page = context.new_page()
            rig.sign_in(page)
            expect(page.get_by_role("heading", name="Your AWS access")).to_be_visible()
            context.close()
        assert rig.principals() == [("carol", "carol", CAROL)]
        assert logins(rig) == [("ok", "authenticated", CAROL)] * 2


def test_attribute_names_that_match_nothing_are_named_to_the_person_and_in_the_audit(
    chromium: Browser, make_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    # The store maps short names; SimpleSAMLphp releases urn:oid: names (name2oid), as federations do.
    store = {"attributes": {"username": None, "email": "email", "groups": "groups"}}
    with SimpleSamlRig(make_config(), tmp_path, store=store) as rig:
        context = chromium.new_context()
        page = context.new_page()
        rig.sign_in(page)
        expect(page.get_by_role("heading", name="Signed in, with information missing")).to_be_visible()
        expect(page.get_by_role("alert")).to_contain_text("did not send email, groups")
        expect(page.get_by_text(OID_UID)).to_be_visible()
        page.get_by_role("link", name="Continue").click()
        expect(page.get_by_role("heading", name="Your AWS access")).to_be_visible()
        context.close()
        [login] = [e for e in rig.audit() if e.event == "login"]
        assert (login.outcome, login.reason) == ("ok", "authenticated")
        assert login.detail["attributes_absent"] == ["email", "groups"]
        assert OID_UID in login.detail["attributes_present"]


def test_idp_initiated_sign_in_is_refused(
    chromium: Browser, make_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    with SimpleSamlRig(make_config(), tmp_path) as rig:
        context = chromium.new_context()
        page = context.new_page()
        page.goto(rig.idp.idp_initiated_login_url())
        page.fill('input[name="username"]', "carol")
        page.fill('input[name="password"]', "carol-long-password")
        page.locator('button[type="submit"], input[type="submit"]').first.click()
        page.wait_for_url(f"{rig.url}/**")
        expect(page.get_by_role("alert")).to_contain_text("Sign-in must start at this broker")
        context.close()
        assert logins(rig) == [("denied", "saml.unsolicited", None)]
        assert rig.principals() == []


def test_without_single_logout_the_signed_out_page_says_the_idp_session_lives_on(
    chromium: Browser, make_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    with SimpleSamlRig(make_config(), tmp_path, single_logout=False) as rig:
        context = chromium.new_context()
        page = context.new_page()
        rig.sign_in(page)
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(f"{rig.url}/signed-out?**")
        expect(page.locator('[data-idp-session="kept"]')).to_contain_text(
            "Your sign-in at University SSO is still active"
        )
        page.wait_for_timeout(1000)
        assert page.url.startswith(f"{rig.url}/signed-out")
        assert logouts(rig) == [("ok", "user_logout", CAROL)]
        context.close()
