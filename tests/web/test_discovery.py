"""Home realm discovery over real HTTP: /login asks for the e-mail address and goes to the store owning its
domain, with the address as OIDC ``login_hint``, SAML Subject NameID, or the directory form's username; the
CLI's ``--email`` takes the same road; a domain no store owns gets a message and one audit event.

Peers: the broker on a loopback socket (SQLite and PostgreSQL), npm oidc-provider (which pre-fills its login
form from ``login_hint``), Debian's slapd over LDAPS, moto's STS, the credential helper's loopback listener.
"""

from __future__ import annotations

import base64
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from lxml import etree

from broker.app import create_app
from broker.client.api import Broker as Helper
from broker.discovery import Discovery, domain_of
from broker.errors import ConfigError, InvalidRequest
from broker.settings import load_settings
from tests.conftest import SECRET
from tests.support.cli_broker import hidden_fields, local_store
from tests.support.oidc_flow import provider_config, store_config
from tests.support.oidc_provider import OidcProvider
from tests.support.portal import csrf_from
from tests.support.processes import LiveServer, free_port
from tests.support.records import Records
from tests.support.saml_idp import cert_base64, make_keypair
from tests.support.slapd import PASSWORDS, DirectoryPeer, running_directory

HTML = {"Accept": "text/html"}
SAML_SSO = "https://idp.saml.example/sso"


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


def saml_store() -> dict[str, Any]:
    _, cert = make_keypair("idp.saml.example")
    return {
        "type": "saml",
        "name": "partner",
        "display_name": "Partner sign-in",
        "idp_entity_id": "https://idp.saml.example/metadata",
        "sso_url": SAML_SSO,
        "certificates": [cert_base64(cert)],
        "domains": ["saml.example"],
        "subject_hint": True,
    }


def stores(directory: DirectoryPeer, idp: OidcProvider) -> list[dict[str, Any]]:
    return [
        {**store_config("corp", idp.issuer), "domains": ["example.test"]},
        directory.store("dir", domains=["example.com", "*.example.org"]),
        saml_store(),
        local_store(),
    ]


class Running(Records):
    def __init__(self, url: str, db_url: str) -> None:
        self.url, self.db_url = url, db_url


@pytest.fixture
def start(
    make_config: Callable[..., dict[str, Any]], db_url: str, broker_port: int
) -> Iterator[Callable[..., Running]]:
    servers: list[LiveServer] = []

    def run(identity_stores: list[dict[str, Any]], **discovery: Any) -> Running:
        config = make_config(identity_stores=identity_stores, discovery={"enabled": True, **discovery})
        config["public_url"] = f"http://127.0.0.1:{broker_port}"
        server = LiveServer(create_app(load_settings(None, **config)), port=broker_port)
        server.__enter__()
        servers.append(server)
        return Running(f"http://127.0.0.1:{broker_port}", db_url)

    try:
        yield run
    finally:
        for server in servers:
            server.__exit__(None, None, None)


def discover(client: httpx.Client, email: str, next_path: str = "/") -> httpx.Response:
    page = client.get("/login", params={"next": next_path}, headers=HTML)
    assert page.status_code == 200, page.text
    return client.post(
        "/login/discover", data={"email": email, "csrf": csrf_from(page.text), "next": next_path}, headers=HTML
    )


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# ---------------------------------------------------------------- the page


def test_login_asks_for_the_address_and_the_list_stays_one_click_away(
    start: Callable[..., Running], directory: DirectoryPeer, idp: OidcProvider
) -> None:
    running = start(stores(directory, idp))
    with httpx.Client(base_url=running.url, timeout=30) as client:
        page = client.get("/login", headers=HTML)
        assert '<label for="discovery-email">Work e-mail address</label>' in page.text
        assert 'aria-describedby="discovery-help"' in page.text and 'role="alert"' not in page.text
        assert "Sign in with Corp sign-in" not in page.text
        listing = client.get("/login", params={"choose": "1"}, headers=HTML)
        for name in ("Corp sign-in", "Example directory", "Partner sign-in"):
            assert f"Sign in with {name}" in listing.text
        assert 'action="/login/local/breakglass"' in listing.text


# ---------------------------------------------------------------- where each address goes


def test_oidc_domain_goes_to_the_idp_with_login_hint(
    start: Callable[..., Running], directory: DirectoryPeer, idp: OidcProvider
) -> None:
    running = start(stores(directory, idp))
    with httpx.Client(base_url=running.url, timeout=30) as client:
        found = discover(client, "Alice@Example.TEST")
        assert found.status_code == 303
        assert found.headers["location"] == "/login/corp?next=%2F&login_hint=Alice%40Example.TEST"
        started = client.get(found.headers["location"])
        assert started.status_code == 303
        authorize = started.headers["location"]
        assert authorize.startswith(idp.issuer)
        assert query(authorize)["login_hint"] == "Alice@Example.TEST"
        # The real provider puts the hint in its login form.
        login_page = client.get(authorize, follow_redirects=True)
        assert 'value="Alice@Example.TEST"' in login_page.text
    assert not [e for e in running.audit() if e.event == "login.discovery"]


def test_directory_domains_exact_and_wildcard_fill_the_username(
    start: Callable[..., Running], directory: DirectoryPeer, idp: OidcProvider
) -> None:
    running = start(stores(directory, idp))
    with httpx.Client(base_url=running.url, timeout=30) as client:
        for email in ("bob@example.com", "bob@eu.example.org"):
            found = discover(client, email)
            assert found.status_code == 303
            assert urlsplit(found.headers["location"]).path == "/login/ldap/dir"
            form = client.get(found.headers["location"], headers=HTML)
            assert f'value="{email}"' in form.text
        # And the sign-in itself works from there.
        form = client.get("/login/ldap/dir?login_hint=bob%40example.com", headers=HTML)
        signed_in = client.post(
            "/login/ldap/dir",
            data={"username": "bob@example.com", "password": PASSWORDS["bob"], "csrf": csrf_from(form.text)},
            headers=HTML,
        )
        assert signed_in.status_code == 303 and "broker_session" in signed_in.cookies
    [login] = [e for e in running.audit() if e.event == "login"]
    assert (login.outcome, login.store, login.principal) == ("ok", "dir", "bob@example.com")


def test_saml_idp_gets_the_address_as_an_escaped_subject_nameid(
    start: Callable[..., Running], directory: DirectoryPeer, idp: OidcProvider
) -> None:
    running = start(stores(directory, idp))
    with httpx.Client(base_url=running.url, timeout=30) as client:
        # python3-saml pastes the hint into XML unescaped; markup in the local part must stay text.
        address = 'a<b>&"c@saml.example'
        found = discover(client, address)
        assert found.status_code == 303 and urlsplit(found.headers["location"]).path == "/saml/partner/login"
        # The browser follows the form's redirects to the IdP only if the CSP's form-action allows its origin.
        assert "https://idp.saml.example" in found.headers["content-security-policy"]
        started = client.get(found.headers["location"])
        assert started.status_code == 303 and started.headers["location"].startswith(SAML_SSO)
        xml = zlib.decompress(base64.b64decode(query(started.headers["location"])["SAMLRequest"]), -15)
    root = etree.fromstring(xml)
    ns = {"saml": "urn:oasis:names:tc:SAML:2.0:assertion"}
    [name_id] = root.findall("saml:Subject/saml:NameID", ns)
    assert name_id.text == address and len(name_id) == 0


def test_unknown_domain_gets_a_message_and_one_audit_event_without_the_address(
    start: Callable[..., Running], directory: DirectoryPeer, idp: OidcProvider
) -> None:
    running = start(stores(directory, idp))
    with httpx.Client(base_url=running.url, timeout=30) as client:
        refused = discover(client, "someone@elsewhere.example")
        assert refused.status_code == 400
        assert 'role="alert"' in refused.text and 'aria-invalid="true"' in refused.text
        assert "Sign-in for addresses at elsewhere.example is not set up on this broker" in refused.text
        # The typed address stays in the field to be corrected.
        assert 'value="someone@elsewhere.example"' in refused.text
        invalid = discover(client, "not-an-address")
        assert invalid.status_code == 400 and "Enter your work e-mail address" in invalid.text
        api = client.post("/login/discover", data={"email": "x@elsewhere.example", "csrf": csrf_from(refused.text)})
        assert api.status_code == 400 and api.json()["error"] == "invalid_request"
    events = [(e.event, e.outcome, e.reason, e.principal, e.detail["domain"]) for e in running.audit()[1:]]
    assert events == [
        ("login.discovery", "denied", "discovery.domain_unknown", None, "elsewhere.example"),
        ("login.discovery", "denied", "discovery.address_invalid", None, None),
        ("login.discovery", "denied", "discovery.domain_unknown", None, "elsewhere.example"),
    ]
    assert "someone" not in str([e.detail for e in running.audit()])


def test_the_answer_never_depends_on_whether_the_address_exists(
    start: Callable[..., Running], directory: DirectoryPeer, idp: OidcProvider
) -> None:
    running = start(stores(directory, idp))
    with httpx.Client(base_url=running.url, timeout=30) as client:
        # alice exists in the directory, zed does not: same store, same page apart from the echoed address.
        known, unknown = discover(client, "alice@example.com"), discover(client, "zed@example.com")
        assert known.status_code == unknown.status_code == 303
        assert known.headers["location"].replace("alice", "zed") == unknown.headers["location"]
        known_form = client.get(known.headers["location"], headers=HTML).text
        unknown_form = client.get(unknown.headers["location"], headers=HTML).text

        def without_csrf(page: str) -> str:
            return page.replace(csrf_from(page), "").replace("alice", "zed")

        assert without_csrf(known_form) == without_csrf(unknown_form)


def test_fallback_store_takes_unlisted_domains(
    start: Callable[..., Running], directory: DirectoryPeer, idp: OidcProvider
) -> None:
    running = start(stores(directory, idp), fallback_store="dir")
    with httpx.Client(base_url=running.url, timeout=30) as client:
        found = discover(client, "alice@elsewhere.example")
        assert found.status_code == 303 and urlsplit(found.headers["location"]).path == "/login/ldap/dir"
        # A listed domain still goes to its own store.
        assert discover(client, "x@example.test").headers["location"].startswith("/login/corp?")


def test_login_hint_on_login_goes_straight_on(
    start: Callable[..., Running], directory: DirectoryPeer, idp: OidcProvider
) -> None:
    running = start(stores(directory, idp))
    with httpx.Client(base_url=running.url, timeout=30) as client:
        direct = client.get("/login", params={"login_hint": "bob@example.com", "next": "/device"}, headers=HTML)
        assert direct.status_code == 303
        assert direct.headers["location"] == "/login/ldap/dir?next=%2Fdevice&login_hint=bob%40example.com"
        unknown = client.get("/login", params={"login_hint": "bob@nowhere.example"}, headers=HTML)
        assert unknown.status_code == 400 and "nowhere.example" in unknown.text


def test_device_verification_link_with_login_hint_reaches_the_right_sign_in(
    start: Callable[..., Running], directory: DirectoryPeer, idp: OidcProvider
) -> None:
    running = start(stores(directory, idp))
    with httpx.Client(base_url=running.url, timeout=30) as client:
        # `broker login --device --email` prints /device?user_code=...&login_hint=...
        device = client.get("/device", params={"user_code": "BCDF-GHJK", "login_hint": "bob@example.com"}, headers=HTML)
        assert device.status_code == 303
        login = client.get(device.headers["location"], headers=HTML)
        assert login.status_code == 303
        target = login.headers["location"]
        assert urlsplit(target).path == "/login/ldap/dir"
        assert query(target) == {
            "next": "/device?user_code=BCDF-GHJK&login_hint=bob%40example.com",
            "login_hint": "bob@example.com",
        }


# ---------------------------------------------------------------- the CLI: broker login --email


@pytest.fixture
def helper_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BROKER_CLIENT_HOME", str(tmp_path / "helper"))
    monkeypatch.setenv("BROKER_CLIENT_KEYRING", "file")
    return tmp_path / "helper"


def test_cli_login_with_email_lands_on_the_directory_form(
    start: Callable[..., Running], directory: DirectoryPeer, idp: OidcProvider, helper_home: Path
) -> None:
    running = start(stores(directory, idp))
    browser = httpx.Client(base_url=running.url, timeout=30)
    seen: dict[str, str] = {}

    def open_browser(url: str) -> bool:
        """A person's browser: follow the broker to the directory form, sign in, allow the CLI."""

        def walk() -> None:
            authorize = browser.get(url)
            assert authorize.status_code == 303
            login = browser.get(authorize.headers["location"], headers=HTML)
            assert login.status_code == 303
            seen["form"] = login.headers["location"]
            form = browser.get(login.headers["location"], headers=HTML)
            signed_in = browser.post(
                "/login/ldap/dir",
                data={
                    "username": "alice@example.com",
                    "password": PASSWORDS["alice"],
                    "csrf": csrf_from(form.text),
                    "next": query(login.headers["location"])["next"],
                },
                headers=HTML,
            )
            consent = browser.get(signed_in.headers["location"], headers=HTML)
            answer = browser.post("/oauth2/authorize", data={**hidden_fields(consent.text), "decision": "allow"})
            httpx.get(answer.headers["location"], timeout=10)

        threading.Thread(target=walk, daemon=True).start()
        return True

    helper = Helper(running.url)
    try:
        tokens = helper.login_loopback(open_browser, lambda _: None, login_hint="alice@example.com")
    finally:
        helper.close()
        browser.close()
    assert tokens.principal == "alice@example.com"
    assert urlsplit(seen["form"]).path == "/login/ldap/dir"
    assert query(seen["form"])["login_hint"] == "alice@example.com"


# ---------------------------------------------------------------- the pure parts


@pytest.mark.parametrize(
    ("address", "domain"),
    [
        ("a@Example.COM", "example.com"),
        ("a@example.com.", "example.com"),
        ("a@bücher.example", "xn--bcher-kva.example"),
        ("first.last+tag@sub.example.org", "sub.example.org"),
        ('"quoted@local"@example.com', "example.com"),
    ],
)
def test_domain_of(address: str, domain: str) -> None:
    assert domain_of(address) == domain


@pytest.mark.parametrize("address", ["", "@example.com", "a@", "a@localhost", "a b@example.com", "a@exa\x00mple.com"])
def test_domain_of_refuses_what_is_not_an_address(address: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        domain_of(address)
    assert caught.value.reason == "discovery.address_invalid"


def _settings(**overrides: Any) -> Any:
    return load_settings(None, mode="dev", secret_key=SECRET, **overrides)


def test_longest_wildcard_wins_and_unicode_domains_match_their_ascii_form() -> None:
    _, cert = make_keypair("x")
    settings = _settings(
        identity_stores=[
            {**saml_store(), "name": "eu", "domains": ["*.eu.example.org"], "certificates": [cert_base64(cert)]},
            {**saml_store(), "name": "all", "domains": ["*.example.org", "bücher.example"]},
        ],
        discovery={"enabled": True},
    )
    discovery = Discovery(settings)
    assert discovery.realm("a@x.eu.example.org").store == "eu"
    assert discovery.realm("a@x.example.org").store == "all"
    assert discovery.realm("a@BÜCHER.example").store == "all"
    # A wildcard is for subdomains only.
    with pytest.raises(InvalidRequest):
        discovery.realm("a@example.org")


def test_discovery_settings_problems_are_all_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(
            identity_stores=[
                {**saml_store(), "name": "one", "domains": ["example.com"]},
                {**saml_store(), "name": "two", "domains": ["EXAMPLE.com", "not a domain"]},
                local_store(),
            ],
            discovery={"enabled": True, "fallback_store": "breakglass"},
        )
    # The cross-checks come in the same report as the field error.
    assert caught.value.problems == [
        ("identity_stores[1].domains", "'not a domain' is not a domain name such as example.com or *.example.com"),
        ("identity_stores[1].domains[0]", "domain example.com is listed by one and two"),
        ("discovery.fallback_store", "break-glass accounts cannot be the fallback"),
    ]
    with pytest.raises(ConfigError) as caught:
        _settings(
            identity_stores=[
                {**saml_store(), "name": "one", "domains": ["example.com"]},
                {**saml_store(), "name": "two", "domains": ["EXAMPLE.com"]},
                local_store(),
            ],
            discovery={"enabled": True, "fallback_store": "breakglass"},
        )
    assert caught.value.problems == [
        ("identity_stores[1].domains[0]", "domain example.com is listed by one and two"),
        ("discovery.fallback_store", "break-glass accounts cannot be the fallback"),
    ]
    with pytest.raises(ConfigError) as caught:
        _settings(identity_stores=[local_store()], discovery={"enabled": True, "fallback_store": "nope"})
    assert caught.value.problems == [("discovery.fallback_store", "unknown identity store 'nope'")]
    with pytest.raises(ConfigError) as caught:
        _settings(identity_stores=[{**saml_store(), "domains": []}], discovery={"enabled": True})
    assert caught.value.problems == [("discovery.enabled", "list domains on an identity store (or set fallback_store)")]
