"""What every connector offers the sign-in use case (:mod:`broker.signin`), in the manner of Dex's connector
interfaces: every connector names itself, and each sign-in flow is one small protocol.

* :class:`PasswordConnector` (break-glass ``local``, ``ldap``): a typed username and password (and a TOTP
  code where the store holds one) in, one verified :class:`~broker.identity.Identity` out.
* :class:`CallbackConnector` (``oidc``): a redirect to the provider, then its callback in, one verified
  identity out.
* :class:`SamlPostConnector` (``saml``): an AuthnRequest redirect, then the POST-binding response in, checked
  in two stages (everything that needs no database, then the identity after replay and binding checks).

A connector never touches the database, the audit trail or sessions: the use case does, around these calls.
Refusals are :class:`~broker.errors.BrokerError` with a stable ``reason``, which the use case audits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from broker.identity import Identity, MfaLevel

if TYPE_CHECKING:
    from broker.connectors.saml import AuthnRedirect
    from broker.connectors.saml_logout import SamlLogout, SessionRef
    from broker.connectors.saml_response import CheckedResponse


class Connector(Protocol):
    """An identity store the sign-in page can list."""

    @property
    def name(self) -> str: ...

    @property
    def display_name(self) -> str: ...

    @property
    def kind(self) -> str: ...


@dataclass(frozen=True)
class OneTime:
    """A value a sign-in may use once (a TOTP time step), spent through the shared replay guard.

    ``key`` is keyed with HMAC (label ``kind``) before it is stored; ``message`` is what a replay is told.
    """

    kind: str
    key: str
    ttl_seconds: int
    message: str


@dataclass(frozen=True)
class PasswordLogin:
    """A verified password sign-in, and the one-time value it must spend before it counts (if any)."""

    identity: Identity
    one_time: OneTime | None = None


class PasswordConnector(Connector, Protocol):
    """Username and password (plus a TOTP code where the store keeps one) checked by the connector."""

    @property
    def audit_detail(self) -> Mapping[str, object]:
        """Added to every audit event of a sign-in with this store (e.g. ``break_glass``, ``protocol``)."""
        ...

    def account_key(self, username: str) -> str:
        """The per-account rate-limit key for what was typed (directories match names case-insensitively)."""
        ...

    def audit_principal(self, username: str) -> str | None:
        """What the person typed, made safe to record as the refused principal."""
        ...

    def login(self, username: str, password: str, otp: str, *, now: float) -> PasswordLogin: ...


class RedirectStart(Protocol):
    """An authorization request: the URL for the browser, the ``state`` it carries back, the secrets kept."""

    @property
    def url(self) -> str: ...

    @property
    def state(self) -> str: ...

    def stored(self) -> dict[str, Any]: ...


class CallbackLogin(Protocol):
    @property
    def identity(self) -> Identity: ...

    @property
    def acr(self) -> str | None: ...


class CallbackConnector(Connector, Protocol):
    """A redirect to the provider and its callback (OpenID Connect authorization code flow with PKCE)."""

    def authorization_request(
        self, *, acr_values: Sequence[str] = (), max_age: int | None = None, login_hint: str | None = None
    ) -> RedirectStart: ...

    def complete(self, params: Mapping[str, str], stored: Mapping[str, Any]) -> CallbackLogin:
        """Verify the callback against the stored request (``state`` already matched by the use case)."""
        ...

    def step_up_acr_values(self, level: MfaLevel) -> list[str]:
        """``acr_values`` asking the provider for at least ``level``; empty when it cannot step up to it."""
        ...

    def end_session_url(self) -> str | None: ...


class SamlPostConnector(Connector, Protocol):
    """SAML 2.0 Web Browser SSO: HTTP-Redirect AuthnRequest, HTTP-POST response."""

    @property
    def idp_entity_id(self) -> str: ...

    @property
    def allow_idp_initiated(self) -> bool: ...

    @property
    def logout(self) -> SamlLogout | None: ...

    def authn_request(self, *, level: MfaLevel = MfaLevel.NONE, login_hint: str | None = None) -> AuthnRedirect: ...

    def check(self, saml_response: str, *, now: datetime) -> CheckedResponse:
        """Every check that needs no database; nothing about the person is read yet."""
        ...

    def identity(self, checked: CheckedResponse) -> Identity:
        """The person, read only after the use case spent the assertion ID and bound the response."""
        ...

    def attribute_report(self, checked: CheckedResponse) -> tuple[list[str], list[str]]: ...

    def session_ref(self, checked: CheckedResponse) -> SessionRef: ...
