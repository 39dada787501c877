"""Identity stores: break-glass accounts, OpenID Connect and SAML 2.0 providers, and the ``identity_stores``
union (with the LDAP directories of :mod:`broker.settings.directories` and the certificate stores of
:mod:`broker.settings.certificates`), told apart by ``type``."""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from broker import certificates
from broker.settings.base import LOOPBACK_HTTP, NAME, Strict, email_domains
from broker.settings.certificates import X509StoreConfig
from broker.settings.directories import LdapStoreConfig
from broker.settings.secrets import Secret, resolve_secret, secret_text


def _is_totp_secret(value: str) -> bool:
    """RFC 4648 base32 (what RFC 6238 authenticator apps import), 80 bits at least (RFC 4226 section 4)."""
    cleaned = value.replace(" ", "").upper()
    if len(cleaned) < 16 or not re.fullmatch(r"[A-Z2-7]+=*", cleaned):
        return False
    try:
        base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (binascii.Error, ValueError):
        return False
    return True


class LocalAccount(Strict):
    """A break-glass account: argon2id password hash plus a TOTP secret, for when the IdP is down."""

    username: str = Field(pattern=r"^[A-Za-z0-9._@+-]{1,64}$")
    password_hash: SecretStr
    totp_secret: Secret
    email: str | None = None
    groups: list[str] = []

    @field_validator("password_hash", mode="before")
    @classmethod
    def _argon2id(cls, value: Any) -> Any:
        value = resolve_secret(value)
        raw = secret_text(value)
        if not raw.startswith("$argon2id$"):
            raise ValueError("must be an argon2id hash; make one with `broker hash-password`")
        return value

    @field_validator("totp_secret", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        value = resolve_secret(value)
        raw = secret_text(value)
        if not _is_totp_secret(raw):
            raise ValueError(
                "must be a base32 TOTP secret of at least 16 characters (A-Z, 2-7), as authenticator apps take it"
            )
        return value


class LocalStoreConfig(Strict):
    type: Literal["local"] = "local"
    name: str = Field(pattern=NAME.pattern)
    display_name: str = "Break-glass account"
    accounts: list[LocalAccount] = []


class MfaMapping(Strict):
    """Which IdP-asserted values (OIDC ``amr``/``acr``, SAML ``AuthnContextClassRef``) count as which level."""

    mfa: list[str] = []
    phishing_resistant: list[str] = []


# Asymmetric JWS algorithms only (RFC 7518 section 3.1): an ID token signed with the client secret (HS*) would
# let anyone holding that secret mint identities, and "none" is never acceptable.
OIDC_SIGNING_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class OidcStoreConfig(Strict):
    """An OpenID Connect identity provider (owned by ``broker.connectors.oidc``)."""

    type: Literal["oidc"]
    name: str = Field(pattern=NAME.pattern)
    display_name: str = "Company sign-in"
    # Compared byte for byte with the discovery document's and the ID token's ``iss`` (OIDC Discovery 4.3).
    issuer: str
    client_id: str = Field(min_length=1)
    client_secret: Secret | None = None
    client_auth: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] = "client_secret_basic"
    # private_key_jwt (RFC 7523 section 2.2): a PEM private key reference and the key id registered at the IdP.
    private_key: Secret | None = None
    private_key_id: str | None = None
    private_key_alg: Literal["RS256", "PS256", "ES256"] = "RS256"
    scopes: list[str] = ["openid", "email", "profile"]
    username_claim: str = "preferred_username"
    email_claim: str = "email"
    groups_claim: str = "groups"
    # Further claims copied into Identity.attributes (string values only), for `claims:` grant rules.
    attribute_claims: list[str] = []
    # Which `amr` (RFC 8176) and `acr` values count as which MFA level.
    amr: MfaMapping = MfaMapping(mfa=["mfa"])
    acr: MfaMapping = MfaMapping()
    # acr_values to request when a role needs more than the sign-in showed; empty: the IdP cannot step up.
    step_up_acr_values: MfaMapping = MfaMapping()
    userinfo: bool = False
    algorithms: list[str] = Field(["RS256"], min_length=1)
    # Tolerated clock difference for exp/iat/nbf/auth_time; a minute covers NTP-synced hosts.
    clock_skew_seconds: int = Field(60, ge=0, le=300)
    # Checked before any decoding; large group lists can push real ID tokens past 8 kB.
    max_id_token_bytes: int = Field(32768, ge=1024, le=262144)
    rp_logout: bool = True
    timeout_seconds: float = Field(5.0, gt=0, le=30)
    # Home realm discovery: e-mail domains whose people sign in here (the address goes as ``login_hint``).
    domains: list[str] = []

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return email_domains(value)

    @field_validator("client_secret", "private_key", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        return resolve_secret(value)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        if not (value.startswith("https://") or LOOPBACK_HTTP.match(value)) or "?" in value or "#" in value:
            raise ValueError("must be an https:// URL without query or fragment (http only on loopback)")
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        bad = sorted(set(value) - OIDC_SIGNING_ALGORITHMS)
        if bad:
            raise ValueError(f"{bad} not allowed; use asymmetric algorithms such as RS256 or ES256")
        return value

    @model_validator(mode="after")
    def _client_auth(self) -> OidcStoreConfig:
        problems = []
        if "openid" not in self.scopes:
            problems.append("scopes must include openid")
        if self.client_auth == "private_key_jwt":
            if self.private_key is None:
                problems.append("client_auth private_key_jwt needs private_key (env:NAME or file:/path to a PEM)")
        elif self.client_secret is None:
            problems.append(f"client_auth {self.client_auth} needs client_secret (env:NAME or file:/path)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class SamlAttributeNames(Strict):
    """Which SAML ``Attribute`` names carry what. ``username: null`` means the NameID is the username."""

    username: str | None = None
    email: str | None = "email"
    groups: str | None = "groups"


class SamlStepUp(Strict):
    """``AuthnContextClassRef`` values to request (``RequestedAuthnContext``) when a role needs more.

    Empty lists mean "request what ``authn_context`` maps to that level or above".
    """

    mfa: list[str] = []
    phishing_resistant: list[str] = []


class SamlStoreConfig(Strict):
    """A SAML 2.0 identity provider (owned by ``broker.connectors.saml``).

    The IdP is described either inline (``idp_entity_id``, ``sso_url``, ``certificates``) or by an IdP
    metadata file (``metadata_file``) from which they are imported at start-up; inline values win. The SP
    side (entity id, ACS URL) is built from ``public_url``, never from a request's Host header.
    """

    type: Literal["saml"]
    name: str = Field(pattern=NAME.pattern)
    display_name: str = "Company sign-in (SAML)"
    idp_entity_id: str | None = None
    sso_url: str | None = None
    # PEM certificates (or base64 DER bodies) pinned for signature checks; more than one during rollover.
    certificates: list[str] = []
    metadata_file: Path | None = None
    attributes: SamlAttributeNames = SamlAttributeNames()
    authn_context: MfaMapping = MfaMapping()
    step_up: SamlStepUp = SamlStepUp()
    # Unsolicited (IdP-initiated) responses cannot be bound to a browser: login CSRF. Off unless needed.
    allow_idp_initiated: bool = False
    # Require the Response element to be signed as well as the Assertion (the Assertion always must be).
    want_response_signed: bool = False
    # An assertion older than this is refused even when the IdP sets no NotOnOrAfter (or a distant one).
    max_assertion_age_seconds: int = Field(300, ge=30, le=3600)
    # Tolerated difference between the IdP's clock and ours, for NotBefore/NotOnOrAfter/IssueInstant.
    clock_skew_seconds: int = Field(60, ge=0, le=300)
    # Home realm discovery: e-mail domains whose people sign in here.
    domains: list[str] = []
    # Put the discovered address in the AuthnRequest's <Subject><NameID> (core section 3.4.1) for IdPs that
    # use it to pre-fill their sign-in (Shibboleth, SimpleSAMLphp, Keycloak). Off: some IdPs refuse a Subject.
    subject_hint: bool = False

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return email_domains(value)

    # The NameID format asked for in SP metadata and in every AuthnRequest's NameIDPolicy (core 8.3).
    name_id_format: str = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
    # Where the person's stable subject comes from: the NameID, or ``attr.NAME`` (one attribute's value).
    # A transient NameID (core 8.3.8) is refused as a subject: it changes at every sign-in.
    subject: str = Field("name_id", pattern=r"^(name_id|attr\.\S{1,256})$")
    # Single logout (profiles 4.4): the IdP's SingleLogoutService (HTTP-Redirect), inline or from metadata_file,
    # and the broker's own signing key and certificate for LogoutRequest/LogoutResponse (both must be signed).
    slo_url: str | None = None
    sp_private_key: Secret | None = None
    sp_certificate: str | None = None

    @field_validator("sp_private_key", mode="before")
    @classmethod
    def _resolve_sp_key(cls, value: Any) -> Any:
        return resolve_secret(value)

    @field_validator("sp_certificate", mode="before")
    @classmethod
    def _resolve_sp_certificate(cls, value: Any) -> Any:
        resolved = resolve_secret(value)
        return resolved.get_secret_value() if isinstance(resolved, SecretStr) else resolved

    @property
    def subject_attribute(self) -> str | None:
        """The attribute named by ``subject: attr.NAME``, or None when the NameID is the subject."""
        return self.subject[5:] if self.subject.startswith("attr.") else None

    @model_validator(mode="after")
    def _single_logout(self) -> SamlStoreConfig:
        if (self.sp_private_key is None) != (self.sp_certificate is None):
            raise ValueError("set both sp_private_key and sp_certificate (logout messages are signed), or neither")
        if self.slo_url is not None:
            if not re.match(r"^https?://", self.slo_url):
                raise ValueError("slo_url must be an absolute http(s) URL")
            if self.sp_private_key is None:
                raise ValueError("slo_url needs sp_private_key and sp_certificate: logout messages must be signed")
        return self

    @field_validator("certificates")
    @classmethod
    def _certificates(cls, value: list[str]) -> list[str]:
        for index, certificate in enumerate(value):
            try:
                certificates.certificate_body(certificate)
            except ValueError:
                raise ValueError(
                    f"certificates[{index}] is not an X.509 certificate (PEM, or the base64 body of one)"
                ) from None
        return value

    @model_validator(mode="after")
    def _idp_described(self) -> SamlStoreConfig:
        if self.metadata_file is not None:
            if not self.metadata_file.is_file():
                raise ValueError(f"metadata_file {self.metadata_file} does not exist")
            return self
        missing = [key for key in ("idp_entity_id", "sso_url", "certificates") if not getattr(self, key)]
        if missing:
            raise ValueError(f"set metadata_file, or idp_entity_id, sso_url and certificates (missing: {missing})")
        if self.sso_url and not re.match(r"^https?://", self.sso_url):
            raise ValueError("sso_url must be an absolute http(s) URL")
        return self


# ---------------------------------------------------------------- devices and workloads with certificates

# Certificate fields a mapping rule may match and render (``broker.connectors.x509``): ``subject`` and


IdentityStoreConfig = Annotated[
    LocalStoreConfig | OidcStoreConfig | SamlStoreConfig | LdapStoreConfig | X509StoreConfig,
    Field(discriminator="type"),
]
