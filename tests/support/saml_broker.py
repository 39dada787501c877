"""The broker as a SAML service provider, wired to the real pysaml2 IdP peer, for HTTP and browser tests.

:class:`SamlRig` owns one IdP (:class:`~tests.support.saml_idp.SamlIdpServer`) and one broker on a real
loopback port whose ``public_url`` is known before it starts, so the IdP can be told the broker's entity id
and ACS URL. :meth:`SamlRig.begin` starts a sign-in at the broker like a browser (binding cookie included)
and returns the AuthnRequest the IdP received, so a test can answer it with any response it likes.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from broker.app import create_app
from broker.settings import Settings, load_settings
from tests.support.processes import LiveServer, free_port
from tests.support.saml_idp import AC_MFA, AC_PASSWORD_PROTECTED_TRANSPORT, ParsedAuthnRequest, SamlIdpServer, SamlUser

STORE = "corp"
AC_PHISHING_RESISTANT = "urn:test:ac:classes:phishing-resistant"

USERS: dict[str, SamlUser] = {
    "alice": {
        "password": "correct horse battery staple",
        "name_id": "alice@corp.example",
        "attributes": {"email": ["alice@corp.example"], "groups": ["engineering", "admins"], "dept": ["r&d"]},
        "authn_context": AC_MFA,
        "step_up_authn_context": AC_PHISHING_RESISTANT,
    },
    "bob": {
        "password": "bob's long password",
        "name_id": "bob@corp.example",
        "attributes": {"email": ["bob@corp.example"], "groups": ["engineering"]},
    },
}


def saml_store(idp: SamlIdpServer, **overrides: Any) -> dict[str, Any]:
    store: dict[str, Any] = {
        "type": "saml",
        "name": STORE,
        "display_name": "Corp SSO",
        "idp_entity_id": idp.entity_id,
        "sso_url": idp.sso_url,
        "certificates": [idp.cert_pem.decode()],
        "attributes": {"email": "email", "groups": "groups"},
        "authn_context": {"mfa": [AC_MFA], "phishing_resistant": [AC_PHISHING_RESISTANT]},
    }
    store.update(overrides)
    return store


@dataclass
class Started:
    """A sign-in started at the broker: the AuthnRequest as the IdP parsed it, and the redirect URL."""

    request: ParsedAuthnRequest
    location: str
    saml_request: str


class SamlRig:
    """An IdP peer plus a broker that trusts it. Use as a context manager."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        users: Mapping[str, SamlUser] = USERS,
        store_overrides: Mapping[str, Any] | None = None,
        port: int | None = None,
        extra_stores: list[dict[str, Any]] | None = None,
        **idp_kwargs: Any,
    ) -> None:
        self.port = port or free_port()
        self.public_url = f"http://127.0.0.1:{self.port}"
        self.entity_id = f"{self.public_url}/saml/{STORE}/metadata"
        self.acs_url = f"{self.public_url}/saml/{STORE}/acs"
        self.idp_server = SamlIdpServer(self.entity_id, self.acs_url, users, **idp_kwargs)
        self.idp = self.idp_server.idp
        self.config = dict(config)
        self.config["public_url"] = self.public_url
        self.config["identity_stores"] = [
            saml_store(self.idp_server, **(store_overrides or {})),
            *(extra_stores or []),
        ]
        self.settings: Settings = load_settings(None, **self.config)
        self.server: LiveServer | None = None

    def __enter__(self) -> SamlRig:
        self.idp_server.start()
        self.server = LiveServer(create_app(self.settings), port=self.port).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.__exit__(*exc)
        self.idp_server.stop()

    @property
    def url(self) -> str:
        return self.public_url

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=30, headers={"Accept": "text/html"})

    def begin(self, client: httpx.Client, *, next_path: str = "/", level: str | None = None) -> Started:
        params = {"next": next_path, **({"level": level} if level else {})}
        reply = client.get(f"/saml/{STORE}/login", params=params)
        assert reply.status_code == 303, reply.text
        location = reply.headers["location"]
        query = parse_qs(urlsplit(location).query)
        saml_request = query["SAMLRequest"][0]
        parsed = self.idp.parse_authn_request_full(saml_request, None)
        return Started(parsed, location, saml_request)

    def respond(self, started: Started, **kwargs: Any) -> str:
        """A correct, signed response to ``started`` from the IdP (pysaml2), overridable per field."""
        kwargs.setdefault("name_id", "alice@corp.example")
        kwargs.setdefault("attributes", USERS["alice"].get("attributes"))
        kwargs.setdefault("authn_context_class_ref", AC_MFA)
        kwargs.setdefault("in_response_to", started.request.request_id)
        return self.idp.make_response(**kwargs)

    @staticmethod
    def post(client: httpx.Client, xml: str | bytes, *, relay_state: str | None = None) -> httpx.Response:
        data = xml.encode() if isinstance(xml, str) else xml
        fields = {"SAMLResponse": base64.b64encode(data).decode()}
        if relay_state is not None:
            fields["RelayState"] = relay_state
        return client.post(f"/saml/{STORE}/acs", data=fields)


__all__ = ["AC_MFA", "AC_PASSWORD_PROTECTED_TRANSPORT", "AC_PHISHING_RESISTANT", "STORE", "USERS", "SamlRig"]
