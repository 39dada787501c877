"""Typed configuration: one YAML file, environment overrides, validated at start-up.

``load_settings(path)`` reads the YAML file, lets ``BROKER_*`` environment variables override it (nested keys
with ``__``, e.g. ``BROKER_AWS__REGION``; ``BROKER_DATABASE_URL`` and ``BROKER_SECRET_KEY`` at the top level),
resolves secret references (``env:NAME`` or ``file:/path``) and validates everything in one pass, so a bad
file yields every problem at once as a :class:`~broker.errors.ConfigError`, each with its YAML path.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from cryptography import x509
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from broker.errors import ConfigError
from broker.identity import MfaLevel

# STS AssumeRole accepts 900..43200 seconds (AssumeRole API reference, DurationSeconds).
STS_MIN_DURATION = 900
STS_MAX_DURATION = 43200
PLACEHOLDER_MARKERS = ("change-me", "changeme", "dev-only", "example", "placeholder")
MIN_SECRET_LENGTH = 32

_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}$")
_POLICY_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}|aws):policy/[\w+=,.@/-]{1,512}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_TAG_KEY = re.compile(r"^[\w .:/=+\-@]{1,128}$")


def resolve_secret(value: Any) -> Any:
    """Resolve ``env:NAME`` and ``file:/path`` references so that secrets never sit in the YAML file."""
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not isinstance(raw, str):
        return value
    if raw.startswith("env:"):
        name = raw[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return SecretStr(os.environ[name])
    if raw.startswith("file:"):
        path = Path(raw[5:])
        try:
            return SecretStr(path.read_text().strip())
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    return value


Secret = Annotated[SecretStr, Field(description="a secret, or a reference env:NAME / file:/path")]


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors (a typo must not silently weaken policy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_root_secret(value: Any, *, dev: bool) -> None:
    raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    if dev:
        return
    if any(marker in raw.lower() for marker in PLACEHOLDER_MARKERS):
        raise ValueError(
            "is a placeholder; outside dev mode set a real secret "
            "(e.g. BROKER_SECRET_KEY from `python -c 'import secrets; "
            "print(secrets.token_urlsafe(48))'`)"
        )
    if len(raw) < MIN_SECRET_LENGTH:
        raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")


class RootKeySetting(Strict):
    """One root secret of the keyring (``secret_keys``). Never reuse an id for another value."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")
    value: Secret

    @field_validator("value", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        return resolve_secret(value)


class SessionSettings(Strict):
    cookie_name: str = "broker_session"
    # Secure cookies need HTTPS; only plain-HTTP local development turns this off.
    cookie_secure: bool = True
    idle_timeout_minutes: int = Field(30, ge=1, le=24 * 60)
    absolute_timeout_hours: int = Field(12, ge=1, le=7 * 24)


class AwsSettings(Strict):
    region: str = "us-east-1"
    # Set to the STS emulator in development and tests; None means AWS's regional endpoint.
    sts_endpoint_url: str | None = None
    # IAM endpoint for revocation (PutRolePolicy); None: the STS endpoint when set (emulators), else AWS's.
    iam_endpoint_url: str | None = None
    # AWS's console federation endpoint. AWS offers no emulator for it; tests point this at a stand-in.
    federation_endpoint: str | None = "https://signin.aws.amazon.com/federation"
    console_destination: str = "https://console.aws.amazon.com/"
    # True when the broker itself runs on role credentials: STS then caps sessions at one hour.
    role_chaining: bool = False
    connect_timeout_seconds: float = Field(2.0, gt=0, le=30)
    read_timeout_seconds: float = Field(5.0, gt=0, le=60)
    max_attempts: int = Field(3, ge=1, le=10)
    # assume_role: the broker's own AWS credentials call AssumeRole. web_identity: the broker signs a token for
    # each request and calls AssumeRoleWithWebIdentity, with IAM trusting the broker as an OIDC provider, so
    # the deployment holds no AWS access key at all (docs/token-exchange.md).
    mode: Literal["assume_role", "web_identity"] = "assume_role"


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
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if not raw.startswith("$argon2id$"):
            raise ValueError("must be an argon2id hash; make one with `broker hash-password`")
        return value

    @field_validator("totp_secret", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        value = resolve_secret(value)
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if not _is_totp_secret(raw):
            raise ValueError(
                "must be a base32 TOTP secret of at least 16 characters (A-Z, 2-7), as authenticator apps take it"
            )
        return value


class LocalStoreConfig(Strict):
    type: Literal["local"] = "local"
    name: str = Field(pattern=_NAME.pattern)
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
_LOOPBACK_HTTP = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/|$)")


class OidcStoreConfig(Strict):
    """An OpenID Connect identity provider (owned by ``broker.connectors.oidc``)."""

    type: Literal["oidc"]
    name: str = Field(pattern=_NAME.pattern)
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
        return _domains(value)

    @field_validator("client_secret", "private_key", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        return resolve_secret(value)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        if not (value.startswith("https://") or _LOOPBACK_HTTP.match(value)) or "?" in value or "#" in value:
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
    name: str = Field(pattern=_NAME.pattern)
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
        return _domains(value)

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
            body = re.sub(r"-----(BEGIN|END) CERTIFICATE-----|\s", "", certificate)
            try:
                x509.load_der_x509_certificate(base64.b64decode(body, validate=True))
            except (binascii.Error, ValueError):
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
# ``issuer`` (RFC 4514 strings), their attributes (``subject.CN``, ``issuer.O``...), ``serial`` (lower-case hex),
# ``fingerprint`` (SHA-256 of the DER, lower-case hex) and the SANs ``san.uri``, ``san.dns``, ``san.email``,
# ``san.ip``.
_X509_FIELD = re.compile(
    r"^(subject|issuer)(\.[A-Za-z][A-Za-z0-9.]{0,63})?$|^(serial|fingerprint|san\.(uri|dns|email|ip))$"
)
_X509_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")


def _x509_template(value: str) -> str:
    for name in _X509_TEMPLATE_FIELD.findall(value):
        if not _X509_FIELD.match(name):
            raise ValueError(f"{{{name}}} is not a certificate field (subject.CN, san.uri, serial, ...)")
    return value


class X509MappingRule(Strict):
    """One way a certificate becomes an identity. Every ``match`` pattern must hold (shell-style globs, case
    sensitive; a multi-valued field such as ``san.uri`` matches when one value does). Templates fill
    ``{field}`` from the certificate; a rule whose templates name a field the certificate lacks is refused."""

    match: dict[str, str] = Field(min_length=1)
    subject: str = "{subject.CN}"
    username: str | None = None
    email: str | None = None
    groups: list[str] = []
    attributes: dict[str, str] = {}

    @field_validator("match")
    @classmethod
    def _fields(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _X509_FIELD.match(name):
                raise ValueError(f"{name!r} is not a certificate field (subject.CN, san.uri, issuer, serial, ...)")
        return value

    @model_validator(mode="after")
    def _templates(self) -> X509MappingRule:
        for template in [self.subject, self.username or "", self.email or "", *self.attributes.values()]:
            _x509_template(template)
        return self


class X509StoreConfig(Strict):
    """Devices and workloads that hold a certificate from the company's CA (owned by
    ``broker.connectors.x509``): trust anchors, optional intermediates, CRLs, and rules mapping certificate
    fields to an identity, so grant rules, session tags and SourceIdentity apply as for people."""

    type: Literal["x509"]
    name: str = Field(pattern=_NAME.pattern)
    display_name: str = "Device certificates"
    # PEM files of the root (or issuing) CAs this store trusts; every certificate in them is an anchor.
    trust_anchors: list[Path] = Field(min_length=1)
    # PEM files of intermediate CAs used to build paths (never trusted on their own).
    intermediates: list[Path] = []
    # Also use intermediates the device presents (x5c, the TLS or proxy chain) to build the path. They must
    # still chain to an anchor; off means only the configured intermediates are used.
    client_intermediates: bool = True
    rules: list[X509MappingRule] = Field(min_length=1)
    # CRLs fetched over HTTP(S), each issued by a CA of this store. With any configured, the leaf's issuer
    # must have one here; intermediates are checked when their issuer has one.
    crl_urls: list[str] = []
    # deny: a CRL that cannot be fetched or is past its nextUpdate refuses sign-in (fail closed); allow: the
    # sign-in goes ahead and the audit event says revocation was not checked.
    crl_failure: Literal["deny", "allow"] = "deny"
    # A fetched CRL is used at most this long (and never past its nextUpdate) before it is fetched again.
    crl_max_age_seconds: int = Field(3600, ge=10, le=7 * 86400)
    crl_max_bytes: int = Field(10 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    crl_timeout_seconds: float = Field(5.0, gt=0, le=60)
    # Leaf plus presented intermediates; more is refused before parsing (real device chains hold 2 or 3).
    max_chain_certificates: int = Field(4, ge=1, le=10)
    # Signed assertions (RFC 7523) are minted per request: a longer exp - iat is refused.
    max_assertion_lifetime_seconds: int = Field(300, ge=30, le=3600)
    clock_skew_seconds: int = Field(60, ge=0, le=300)

    @field_validator("crl_urls")
    @classmethod
    def _crl_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.match(r"^https?://[^/?#]+", url):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return value

    @field_validator("trust_anchors", "intermediates")
    @classmethod
    def _pem_files(cls, value: list[Path]) -> list[Path]:
        from cryptography import x509

        problems = []
        for path in value:
            try:
                if not x509.load_pem_x509_certificates(path.read_bytes()):
                    problems.append(f"{path} holds no certificate")
            except OSError as exc:
                problems.append(f"cannot read {path}: {exc.strerror}")
            except ValueError:
                problems.append(f"{path} is not a PEM certificate file")
        if problems:
            raise ValueError("; ".join(problems))
        return value


class ForwardedCertificateProxy(Strict):
    """A TLS-terminating proxy that forwards the client certificate it verified. The header is believed only
    when the TCP peer is one of ``addresses`` (never the X-Forwarded-For value)."""

    addresses: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(min_length=1)
    # envoy: x-forwarded-client-cert (Cert= and Chain=, URL-encoded PEM); nginx: $ssl_client_escaped_cert.
    format: Literal["envoy", "nginx"]
    header: str | None = None

    @property
    def header_name(self) -> str:
        default = "x-forwarded-client-cert" if self.format == "envoy" else "x-ssl-client-cert"
        return (self.header or default).lower()


class DeviceSettings(Strict):
    """Certificate sign-in over mutual TLS (``POST /device/credentials``), at the broker or at a proxy."""

    # Serving TLS itself (server.tls_cert_file): ask clients for a certificate and let the TLS layer accept
    # those chaining to the CAs in this PEM file. The broker then validates the certificate itself in full.
    tls_client_ca_file: Path | None = None
    trusted_proxies: list[ForwardedCertificateProxy] = []

    @field_validator("tls_client_ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} does not exist")
        return value


# ---------------------------------------------------------------- LDAP directories and home realm discovery

_DOMAIN = re.compile(r"^(\*\.)?([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
_LDAP_ATTRIBUTE = r"^[A-Za-z][A-Za-z0-9-]{0,63}$"


def _domains(value: list[str]) -> list[str]:
    """E-mail domains a store owns, lower-cased and in ASCII (IDNA); ``*.example.com`` means any subdomain."""
    normalized = []
    for domain in value:
        wildcard = domain.startswith("*.")
        bare = domain[2:] if wildcard else domain
        try:
            ascii_name = bare.strip().rstrip(".").encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise ValueError(f"{domain!r} is not a domain name") from None
        name = ("*." if wildcard else "") + ascii_name
        if not _DOMAIN.match(name):
            raise ValueError(f"{domain!r} is not a domain name such as example.com or *.example.com")
        normalized.append(name)
    return normalized


class LdapAttributes(Strict):
    """Which directory attributes carry what (Active Directory: ``sAMAccountName``, ``objectGUID``)."""

    username: str = Field("uid", pattern=_LDAP_ATTRIBUTE)
    email: str | None = Field("mail", pattern=_LDAP_ATTRIBUTE)
    # A value that never changes (renames and moves change the DN): entryUUID (RFC 4530), AD's objectGUID.
    subject: str = Field("entryUUID", pattern=_LDAP_ATTRIBUTE)
    # Copied into Identity.attributes (first value, as text), for `claims:` grant rules.
    extra: list[str] = []

    @field_validator("extra")
    @classmethod
    def _extra(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(_LDAP_ATTRIBUTE, name):
                raise ValueError(f"{name!r} is not an attribute name")
        return value


class LdapGroups(Strict):
    """Where a person's groups come from: the ``memberOf`` attribute, a search of group entries, or nowhere.

    Each group's name is the value of ``name_attribute`` (for ``member_of``: of the group DN's first RDN).
    """

    source: Literal["member_of", "search", "none"] = "member_of"
    member_of_attribute: str = Field("memberOf", pattern=_LDAP_ATTRIBUTE)
    base_dn: str | None = None
    # ANDed with (member_attribute=<the person's DN>).
    filter: str = "(objectClass=groupOfNames)"
    # May name an extensible-match rule, e.g. AD's LDAP_MATCHING_RULE_IN_CHAIN "member:1.2.840.113556.1.4.1941:".
    member_attribute: str = Field("member", pattern=r"^[A-Za-z][A-Za-z0-9-]{0,63}(:[0-9]+(\.[0-9]+)*:)?$")
    name_attribute: str = Field("cn", pattern=_LDAP_ATTRIBUTE)
    # Follow groups that are members of groups, up to max_depth levels (cycles are cut).
    nested: bool = False
    max_depth: int = Field(5, ge=1, le=20)
    # A person in more groups than this is refused (a runaway nesting or a hostile directory).
    max_groups: int = Field(500, ge=1, le=10000)

    @model_validator(mode="after")
    def _base(self) -> LdapGroups:
        if self.source == "search" and not self.base_dn:
            raise ValueError("source search needs base_dn (where the group entries are)")
        if not (self.filter.startswith("(") and self.filter.endswith(")")):
            raise ValueError("filter must be an LDAP filter in parentheses, e.g. (objectClass=groupOfNames)")
        return self


class LdapStoreConfig(Strict):
    """An LDAP directory (OpenLDAP, Active Directory, 389 DS, FreeIPA), owned by ``broker.connectors.ldap``.

    The broker binds with a service account, finds the person with an escaped filter, then binds as the
    person with the password they typed. A directory proves only a password: roles that need MFA get it from
    the broker's own factors (TOTP, WebAuthn).
    """

    type: Literal["ldap"]
    name: str = Field(pattern=_NAME.pattern)
    display_name: str = "Company directory"
    # ldaps://host:636, or ldap://host:389 with start_tls. Plain ldap:// only in dev mode.
    url: str
    start_tls: bool = False
    # PEM bundle of the CA(s) that issued the directory's certificate; None: the system's trust store.
    # Verification is always on (hostname and chain); there is no switch to turn it off.
    ca_file: Path | None = None
    bind_dn: str = Field(min_length=3)
    bind_password: Secret
    user_base_dn: str = Field(min_length=3)
    user_filter: str = "(objectClass=person)"
    # What a person may type to sign in: matched against each of these attributes (ORed), value escaped.
    login_attributes: list[str] = Field(["uid"], min_length=1, max_length=4)
    attributes: LdapAttributes = LdapAttributes()
    groups: LdapGroups = LdapGroups()
    # Bounds on every wait: TCP and TLS connect, then each operation's answer. A dead or slow directory
    # costs a sign-in at most connect + a few operations' timeouts, never a hung worker.
    connect_timeout_seconds: float = Field(3.0, gt=0, le=30)
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    # Home realm discovery: e-mail domains whose people sign in here.
    domains: list[str] = []

    @field_validator("bind_password", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        return resolve_secret(value)

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return _domains(value)

    @field_validator("login_attributes")
    @classmethod
    def _login_attributes(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(_LDAP_ATTRIBUTE, name):
                raise ValueError(f"{name!r} is not an attribute name such as uid, sAMAccountName or mail")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^ldaps?://[^/?#\s]+/?$", value):
            raise ValueError("must be ldaps://host[:port] (or ldap://host[:port] with start_tls)")
        return value.rstrip("/")

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} does not exist")
        return value

    @field_validator("user_filter")
    @classmethod
    def _filter(cls, value: str) -> str:
        if not (value.startswith("(") and value.endswith(")")):
            raise ValueError("must be an LDAP filter in parentheses, e.g. (objectClass=person)")
        return value

    @property
    def encrypted(self) -> bool:
        return self.url.startswith("ldaps://") or self.start_tls

    @model_validator(mode="after")
    def _tls(self) -> LdapStoreConfig:
        if self.url.startswith("ldaps://") and self.start_tls:
            raise ValueError("use ldaps:// or start_tls, not both")
        return self


class DiscoverySettings(Strict):
    """Home realm discovery: ``/login`` asks for the e-mail address first and goes straight to the identity
    store that lists its domain (``identity_stores[].domains``), passing the address on as a hint."""

    enabled: bool = False
    # The store for addresses whose domain no store lists; None: such an address gets a message instead.
    fallback_store: str | None = None


IdentityStoreConfig = Annotated[
    LocalStoreConfig | OidcStoreConfig | SamlStoreConfig | LdapStoreConfig | X509StoreConfig,
    Field(discriminator="type"),
]


class GrantRule(Strict):
    """One way to be granted a role. Conditions within a rule must all hold; any rule may grant."""

    stores: list[str] = []
    groups: list[str] = []
    subjects: list[str] = []
    emails: list[str] = []
    claims: dict[str, list[str]] = {}
    # A rule with no condition would grant everybody; that must be said explicitly.
    everyone: bool = False

    @model_validator(mode="after")
    def _not_empty(self) -> GrantRule:
        has_condition = bool(self.stores or self.groups or self.subjects or self.emails or self.claims)
        if not has_condition and not self.everyone:
            raise ValueError(
                "a grant rule needs a condition (groups, subjects, emails, claims or stores); "
                "set `everyone: true` to grant every signed-in user"
            )
        return self


def _is_admin_statement(statement: Any) -> bool:
    if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
        return False

    def has_star(key: str) -> bool:
        value = statement.get(key)
        values = value if isinstance(value, list) else [value]
        return "*" in values

    return has_star("Action") and has_star("Resource")


# ---------------------------------------------------------------- just-in-time access and allowed hours

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class RequiresRequest(Strict):
    """A role nobody holds standing: eligible people (its grant rules) ask, someone in ``approvers`` approves,
    and the role is usable for the approved window only (``broker.elevation``)."""

    approvers: list[str] = Field(min_length=1)
    # The longest window one approval may open; a request asking for more is capped to this.
    max_duration_seconds: int = Field(4 * 3600, ge=STS_MIN_DURATION, le=7 * 24 * 3600)
    # A request nobody answers within this expires (and its requester is told).
    request_ttl_minutes: int = Field(60, ge=1, le=7 * 24 * 60)


class AllowedHours(Strict):
    """When a role may be issued: ``start_hour`` <= local hour < ``end_hour`` on ``days``, in ``timezone``."""

    timezone: str = "UTC"
    start_hour: int = Field(0, ge=0, le=23)
    end_hour: int = Field(24, ge=1, le=24)
    days: list[Weekday] = list(WEEKDAYS)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone such as Europe/Berlin") from None
        return value

    @model_validator(mode="after")
    def _order(self) -> AllowedHours:
        if self.start_hour >= self.end_hour:
            raise ValueError("start_hour must be before end_hour")
        return self


# The identity fields a session tag template may name (``broker.policy.render_template``), besides {attr.NAME}.
TAG_PLACEHOLDERS = ("username", "email", "subject", "store", "issuer")


class RoleConfig(Strict):
    name: str = Field(pattern=_NAME.pattern)
    description: str = ""
    role_arn: str
    account_name: str | None = None
    grant: list[GrantRule] = Field(min_length=1)
    mfa: MfaLevel = MfaLevel.MFA
    # Step-up for sensitive roles: the proof of `mfa` must be younger than this (IdP sign-in or broker factor).
    mfa_max_age_minutes: int | None = Field(None, ge=1, le=24 * 60)
    max_duration_seconds: int = Field(3600, ge=STS_MIN_DURATION, le=STS_MAX_DURATION)
    default_duration_seconds: int | None = Field(None, ge=STS_MIN_DURATION, le=STS_MAX_DURATION)
    session_policy: dict[str, Any] | None = None
    policy_arns: list[str] = Field([], max_length=10)
    allow_admin: bool = False
    session_tags: dict[str, str] = {}
    transitive_tags: list[str] = []
    source_cidrs: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    # Just-in-time: the grant rules say who may *ask*; only an approved request makes the role usable.
    requires_request: RequiresRequest | None = None
    allowed_hours: AllowedHours | None = None

    @field_validator("mfa", mode="before")
    @classmethod
    def _mfa(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return MfaLevel.parse(value)
            except KeyError:
                raise ValueError("must be one of none, mfa, phishing_resistant") from None
        return value

    @field_validator("role_arn")
    @classmethod
    def _arn(cls, value: str) -> str:
        if not _ROLE_ARN.match(value):
            raise ValueError("must be an IAM role ARN such as arn:aws:iam::123456789012:role/Name")
        return value

    @field_validator("policy_arns")
    @classmethod
    def _policy_arns(cls, value: list[str], info: ValidationInfo) -> list[str]:
        for arn in value:
            if not _POLICY_ARN.match(arn):
                raise ValueError(f"{arn!r} is not an IAM policy ARN")
        return value

    @field_validator("session_tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 50:
            raise ValueError("STS accepts at most 50 session tags")
        for key, template in value.items():
            if not _TAG_KEY.match(key) or key.lower().startswith("aws:"):
                raise ValueError(f"{key!r} is not a valid session tag key")
            for name in re.findall(r"\{([^{}]*)\}", template):
                if name not in TAG_PLACEHOLDERS and not re.fullmatch(r"attr\.[A-Za-z0-9_:-]+", name):
                    raise ValueError(
                        f"session tag {key!r}: unknown placeholder {{{name}}}; use one of "
                        + ", ".join(f"{{{p}}}" for p in TAG_PLACEHOLDERS)
                        + " or {attr.NAME}"
                    )
        return value

    @property
    def account(self) -> str:
        match = _ROLE_ARN.match(self.role_arn)
        assert match is not None
        return match.group(1)

    @model_validator(mode="after")
    def _cross_checks(self) -> RoleConfig:
        problems = []
        if self.default_duration_seconds and self.default_duration_seconds > self.max_duration_seconds:
            problems.append("default_duration_seconds exceeds max_duration_seconds")
        unknown = set(self.transitive_tags) - set(self.session_tags)
        if unknown:
            problems.append(f"transitive_tags names tags that are not in session_tags: {sorted(unknown)}")
        statements = (self.session_policy or {}).get("Statement", [])
        statements = statements if isinstance(statements, list) else [statements]
        admin = any(_is_admin_statement(s) for s in statements) or any(
            arn.endswith(":policy/AdministratorAccess") for arn in self.policy_arns
        )
        if admin and not self.allow_admin:
            problems.append(
                'the session policy allows "*" actions on "*" resources; '
                "set `allow_admin: true` if this role really is an administrator role"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


# ---------------------------------------------------------------- service-to-service token exchange (RFC 8693)

# Asymmetric JWS algorithms a workload issuer may use (RFC 7518 section 3.1). HS* is excluded: with a JWKS of
# public keys, an HMAC "signature" keyed with a public key is the classic key-confusion forgery; "none" never.
WORKLOAD_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
WorkloadAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
_LOOPBACK_URL = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/|$)")


def _https_or_loopback(value: str) -> str:
    if not (value.startswith("https://") or _LOOPBACK_URL.match(value)) or "#" in value:
        raise ValueError("must be an https:// URL (plain http only on loopback)")
    return value


def _public_jwks(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """An inline JWKS must hold public keys only: a private or symmetric key in config is a leak or a bug."""
    if value is None:
        return None
    keys = value.get("keys")
    if not isinstance(keys, list) or not keys:
        raise ValueError('must be a JWKS: {"keys": [...]} with at least one key')
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in {"RSA", "EC", "OKP"}:
            raise ValueError("keys must be RSA, EC or OKP public keys")
        if "d" in key:
            raise ValueError("keys must be public: remove the private part (d)")
    return value


class WorkloadIssuerConfig(Strict):
    """A platform that vouches for workloads with signed JWTs: a Kubernetes cluster, GitHub Actions, a SPIFFE
    trust domain, a company IdP's client-credentials grant. Owned by ``broker.oauth.workload``.

    A verified token becomes an ``Identity`` whose ``store`` is ``name``, so roles and audiences bind to it with
    ordinary grant rules (``stores: [name]`` plus ``subjects`` / ``claims``; nested claims are flattened with
    dots, e.g. ``kubernetes.io.namespace``).
    """

    name: str = Field(pattern=_NAME.pattern)
    # Compared byte for byte with the token's ``iss``.
    issuer: str = Field(min_length=1)
    jwks_uri: str | None = None
    jwks: dict[str, Any] | None = None
    # The token's ``aud`` must contain one of these (a token minted for another service is refused).
    audiences: list[str] = Field(min_length=1)
    algorithms: list[WorkloadAlgorithm] = Field(["RS256"], min_length=1)
    # Which RFC 8693 subject_token_type values this issuer's tokens may arrive as. ``access_token`` requires
    # the RFC 9068 ``typ: at+jwt`` header; ``jwt`` requires no ``typ`` or ``JWT`` (RFC 8725 section 3.11).
    token_types: list[Literal["jwt", "access_token"]] = Field(["jwt"], min_length=1)
    # A token issued (``iat``) longer ago than this is refused even if its ``exp`` is far away.
    max_token_age_seconds: int = Field(3600, ge=60, le=86400)
    # Claims that must be present (beyond iss, sub, aud, exp, iat, which always are).
    required_claims: list[str] = []
    # Refuse a second exchange of the same ``jti`` (then ``jti`` is required); remembered until ``exp``.
    single_use_jti: bool = False
    username_claim: str | None = None
    groups_claim: str | None = None
    # Tolerated clock difference for exp/nbf/iat; a minute covers NTP-synced hosts.
    clock_skew_seconds: int = Field(60, ge=0, le=300)
    # Checked before any decoding, so an oversized token costs nothing to refuse.
    max_token_bytes: int = Field(16384, ge=1024, le=131072)
    # How long a fetched JWKS is trusted before it is fetched again.
    jwks_cache_seconds: int = Field(300, ge=10, le=86400)
    # An unknown ``kid`` triggers at most one refetch per this interval (a flood of bogus kids cannot turn
    # the broker into a load generator against the issuer).
    jwks_refresh_interval_seconds: int = Field(30, ge=1, le=3600)
    http_timeout_seconds: float = Field(3.0, gt=0, le=30)

    @field_validator("jwks")
    @classmethod
    def _jwks(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _public_jwks(value)

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri(cls, value: str | None) -> str | None:
        return _https_or_loopback(value) if value is not None else None

    @model_validator(mode="after")
    def _one_key_source(self) -> WorkloadIssuerConfig:
        if (self.jwks_uri is None) == (self.jwks is None):
            raise ValueError("set exactly one of jwks_uri and jwks")
        return self


class OAuthClientConfig(Strict):
    """A confidential client of the token endpoint (RFC 6749 section 2.3; RFC 7523 section 2.2)."""

    client_id: str = Field(pattern=r"^[A-Za-z0-9._:@-]{1,128}$")
    auth_method: Literal["client_secret_basic", "private_key_jwt"]
    client_secret: Secret | None = None
    # private_key_jwt: the client's public keys, inline or by URL.
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    grant_types: list[str] = [TOKEN_EXCHANGE_GRANT]

    @field_validator("jwks")
    @classmethod
    def _jwks(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _public_jwks(value)

    @field_validator("client_secret", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        return resolve_secret(value)

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri(cls, value: str | None) -> str | None:
        return _https_or_loopback(value) if value is not None else None

    @model_validator(mode="after")
    def _credentials(self) -> OAuthClientConfig:
        if self.auth_method == "client_secret_basic":
            if self.client_secret is None or len(self.client_secret.get_secret_value()) < MIN_SECRET_LENGTH:
                raise ValueError(f"client_secret_basic needs a client_secret of at least {MIN_SECRET_LENGTH} chars")
        elif (self.jwks is None) == (self.jwks_uri is None):
            raise ValueError("private_key_jwt needs exactly one of jwks and jwks_uri")
        return self


class AudienceBinding(Strict):
    """Who may obtain a broker access token for one internal service (``aud``), and with which scopes."""

    audience: str = Field(min_length=1, max_length=512)
    scopes: list[str] = []
    grant: list[GrantRule] = Field(min_length=1)
    # Shorter than tokens.access_token_ttl_seconds if this service wants it.
    ttl_seconds: int | None = Field(None, ge=30, le=3600)


class TokenSettings(Strict):
    """The broker's own signing keys and access tokens (``broker.oauth.tokens``)."""

    # ES256 (P-256) and EdDSA (Ed25519) are compact and fast; AWS STS accepts ES256 but not EdDSA.
    algorithm: Literal["ES256", "EdDSA"] = "ES256"
    access_token_ttl_seconds: int = Field(300, ge=30, le=3600)
    # A new signing key every period; the previous key stays in the JWKS until its last token has expired.
    rotation_period_hours: int = Field(24 * 30, ge=1, le=24 * 365)
    # How often a process re-reads the key table (another process may have rotated).
    key_cache_seconds: int = Field(60, ge=1, le=3600)
    # ``aud`` of the tokens the broker signs for AssumeRoleWithWebIdentity (aws.mode: web_identity).
    web_identity_audience: str = "sts.amazonaws.com"
    # Lifetime of those tokens: STS reads them once, immediately.
    web_identity_ttl_seconds: int = Field(300, ge=60, le=3600)


class CliSettings(Strict):
    """The credential helper's sign-in (``broker.oauth.device``, ``authorization_code``, ``refresh``).

    The helper is the public client ``broker-cli`` (RFC 8252 section 8.4: no secret, PKCE instead)."""

    enabled: bool = True
    # A CLI sign-in lasts this long at most, and never longer than the browser session that approved it
    # (the MFA proof is that session's). Refresh tokens rotate inside that window but never extend it.
    refresh_token_ttl_hours: int = Field(12, ge=1, le=7 * 24)
    # RFC 8628 section 3.2: how long the user has to confirm the code, and the minimum polling interval.
    device_code_ttl_seconds: int = Field(600, ge=60, le=1800)
    device_poll_interval_seconds: int = Field(5, ge=1, le=60)
    # RFC 6749 section 4.1.2: authorization codes are short-lived (10 minutes at most; one is plenty here).
    authorization_code_ttl_seconds: int = Field(60, ge=10, le=600)


class OAuthSettings(Strict):
    """The token endpoint: trusted workload issuers, clients, internal audiences, the broker's tokens."""

    workload_issuers: list[WorkloadIssuerConfig] = []
    clients: list[OAuthClientConfig] = []
    audiences: list[AudienceBinding] = []
    tokens: TokenSettings = TokenSettings()
    cli: CliSettings = CliSettings()
    # When true, every token request must carry client authentication, not only a workload token.
    require_client_authentication: bool = False
    # Form bodies larger than this are refused before parsing.
    max_request_bytes: int = Field(65536, ge=4096, le=1048576)

    @model_validator(mode="after")
    def _unique(self) -> OAuthSettings:
        problems = []
        names = [i.name for i in self.workload_issuers]
        if len(set(names)) != len(names):
            problems.append("workload_issuers: names must be unique")
        issuers = [i.issuer for i in self.workload_issuers]
        if len(set(issuers)) != len(issuers):
            problems.append("workload_issuers: each issuer may be configured once")
        clients = [c.client_id for c in self.clients]
        if len(set(clients)) != len(clients):
            problems.append("clients: client_id values must be unique")
        if any(a.audience == self.tokens.web_identity_audience for a in self.audiences):
            # A workload holding a broker token with STS's audience could call AssumeRoleWithWebIdentity itself
            # and bypass role policy.
            problems.append("audiences: must not include tokens.web_identity_audience")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def issuer(self, name: str) -> WorkloadIssuerConfig | None:
        return next((i for i in self.workload_issuers if i.name == name), None)

    def client(self, client_id: str) -> OAuthClientConfig | None:
        return next((c for c in self.clients if c.client_id == client_id), None)


# ---------------------------------------------------------------- hardening and scale-out


class RateLimitSettings(Strict):
    """Abuse limits (``broker.ratelimit``). ``storage_url`` ``memory://`` keeps counters in each process;
    ``redis://host:6379`` shares them between every broker process behind the load balancer."""

    enabled: bool = True
    storage_url: str = "memory://"
    # Overrides of ``broker.ratelimit.DEFAULT_LIMITS``, keyed "<name>.<ip|principal>", e.g.
    # {"login.ip": "30/minute"}; the value is a `limits` expression ("10/minute", "100 per hour").
    limits: dict[str, str] = {}

    @field_validator("storage_url")
    @classmethod
    def _storage(cls, value: str) -> str:
        if not re.match(r"^(memory://$|rediss?://)", value):
            raise ValueError("must be memory:// or a redis:// / rediss:// URL")
        return value

    @field_validator("limits")
    @classmethod
    def _limits(cls, value: dict[str, str]) -> dict[str, str]:
        from limits import parse_many

        for key, expression in value.items():
            if not re.match(r"^[a-z0-9_-]+\.(ip|principal)$", key):
                raise ValueError(f"{key!r}: keys are <name>.ip or <name>.principal")
            try:
                parse_many(expression)
            except ValueError:
                raise ValueError(f"{key}: {expression!r} is not a rate such as 10/minute") from None
        return value


class ServerSettings(Strict):
    """How ``broker serve`` listens: request size caps, trusted proxies, TLS without a terminating proxy."""

    # Whole request bodies above this are refused with 413 before any route reads them (routes may cap lower).
    # The default stays above the SAML ACS's own audited cap (512 kB) so that refusal keeps its SAML reason.
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=4096, le=16 * 1024 * 1024)
    # All request headers together (names and values) above this are refused with 431 (RFC 6585 section 5).
    max_header_bytes: int = Field(16384, ge=2048, le=262144)
    # X-Forwarded-For / -Proto are honoured only from these peer addresses (uvicorn forwarded_allow_ips);
    # empty: never (the TCP peer is the client).
    forwarded_allow_ips: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    # Serve HTTPS directly: PEM certificate chain and private key paths.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # The OpenAPI document (/openapi.json) and its browsable page (/api/docs). They map every endpoint for an
    # attacker too, so they are off in production unless turned on here; unset means on in dev mode only.
    api_docs: bool | None = None

    @model_validator(mode="after")
    def _tls(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"{path} does not exist")
        return self


# ---------------------------------------------------------------- administration, notifications, alerts


class AdminSettings(Strict):
    """Who may use the admin API (``/api/v1/admin``): membership of these IdP groups. Empty: nobody."""

    admin_groups: list[str] = []
    auditor_groups: list[str] = []
    # Changes (revoke, approve, disable) need at least this sign-in strength; reads need ``read_mfa``.
    change_mfa: MfaLevel = MfaLevel.PHISHING_RESISTANT
    read_mfa: MfaLevel = MfaLevel.MFA
    # Operators who may approve or deny access requests with `broker requests approve|deny`, by the name they
    # act as (``--as NAME``, BROKER_OPERATOR, or login@host). Empty: requests are answered in the portal or API.
    request_operators: list[str] = []

    @field_validator("change_mfa", "read_mfa", mode="before")
    @classmethod
    def _mfa(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return MfaLevel.parse(value)
            except KeyError:
                raise ValueError("must be one of none, mfa, phishing_resistant") from None
        return value


class NotificationSettings(Strict):
    """Slack-compatible webhook (``{"text": ...}``) for requests, approvals, revocations and alerts.

    Deliveries are queued in the database and sent by a background worker (``broker.notify``), so a slow or
    failing receiver never blocks a request; failures are retried and then audited.
    """

    # A Slack incoming-webhook URL is itself a credential: env:NAME or file:/path.
    webhook_url: Secret | None = None
    timeout_seconds: float = Field(5.0, gt=0, le=30)
    max_attempts: int = Field(5, ge=1, le=20)
    # Backoff before attempt n+1 is retry_base_seconds * 2**(n-1).
    retry_base_seconds: float = Field(10.0, gt=0, le=3600)

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        return resolve_secret(value)


class AlertSettings(Strict):
    """Suspicious-behaviour alerts (``broker.monitoring``): audit events plus a webhook call."""

    enabled: bool = True
    # This many refusals (or MFA failures) for one principal within the window is a burst.
    burst_threshold: int = Field(5, ge=2, le=1000)
    burst_window_seconds: int = Field(300, ge=10, le=86400)
    # A sign-in from outside every network (this prefix) the user signed in from before is "new".
    ipv4_prefix: int = Field(24, ge=8, le=32)
    ipv6_prefix: int = Field(64, ge=16, le=128)
    # How often the background worker sweeps expired requests and ended grants and sends deliveries.
    worker_interval_seconds: float = Field(15.0, gt=0, le=3600)


# ---------------------------------------------------------------- MFA held by the broker


class MfaSettings(Strict):
    """Factors the broker itself holds (``broker.mfa``): TOTP, WebAuthn, recovery codes, lockout."""

    # AES-256-GCM keys for TOTP secrets at rest (any string of 32+ characters, from env:NAME or file:/path).
    # The first encrypts; every key decrypts, so rotation is: prepend the new key, keep the old ones until
    # `broker mfa rotate-key` has re-encrypted every secret. Empty: a key derived from secret_key(s); those
    # derived keys keep decrypting after explicit keys are listed, so moving to explicit keys locks nobody out.
    encryption_keys: list[Secret] = []
    # The label authenticator apps show next to the account name.
    totp_issuer: str = Field("Identity broker", min_length=1, max_length=64)
    # WebAuthn relying party: the RP ID defaults to public_url's host, the allowed origins to its origin.
    rp_id: str | None = None
    rp_name: str = Field("Identity broker", min_length=1, max_length=64)
    origins: list[str] = []
    # Lockout (per principal): this many failed codes in a row lock the principal's broker factors.
    max_failures: int = Field(5, ge=1, le=100)
    # Lockout (per client address): failures against any principal from one address.
    max_failures_per_address: int = Field(20, ge=1, le=1000)
    # Failures older than this no longer count towards a lockout.
    failure_window_seconds: int = Field(900, ge=60, le=86400)
    # The first lockout lasts this long, each further one twice as long as the last, up to the maximum.
    lockout_seconds: int = Field(60, ge=1, le=3600)
    max_lockout_seconds: int = Field(3600, ge=1, le=86400)
    recovery_codes: int = Field(10, ge=4, le=20)
    # Adding or removing a factor needs a broker factor completed in this session within this many minutes.
    manage_max_age_minutes: int = Field(15, ge=1, le=240)
    # Who may approve an operator reset of someone's factors (`broker mfa reset`), with a phishing-resistant
    # sign-in fresher than reset_max_age_minutes. Empty: nobody can.
    operators: list[GrantRule] = []
    reset_max_age_minutes: int = Field(10, ge=1, le=60)

    @field_validator("encryption_keys", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        resolved = [resolve_secret(item) for item in value]
        for item in resolved:
            raw = item.get_secret_value() if isinstance(item, SecretStr) else str(item)
            if len(raw) < MIN_SECRET_LENGTH:
                raise ValueError(f"each key must be at least {MIN_SECRET_LENGTH} characters")
        return resolved

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not re.match(r"^https?://[^/?#]+$", origin):
                raise ValueError(f"{origin!r} is not an origin such as https://broker.example.com")
        return value


# ---------------------------------------------------------------- audit sealing and anchors


class AuditS3Sink(Strict):
    """An S3 bucket created with Object Lock (``ObjectLockEnabledForBucket``): digests become write-once."""

    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = "broker-audit/"
    region: str | None = None
    # Set for S3-compatible stores and emulators; None means AWS's regional endpoint.
    endpoint_url: str | None = None
    # Each digest is locked for this long; COMPLIANCE mode cannot be shortened, not even by the account root.
    retention_days: int = Field(400, ge=1, le=36500)
    lock_mode: Literal["COMPLIANCE", "GOVERNANCE"] = "COMPLIANCE"


class AuditAnchorSettings(Strict):
    """Signed digests of the sealed trail, written where the database cannot rewrite them (``broker.anchors``)."""

    # An Ed25519 private key (PEM, from env:NAME or file:/path). Only its public half is needed to verify, so
    # the auditor's copy never lets anyone sign.
    signing_key: Secret | None = None
    # A digest is signed this often (when something new was sealed); events sealed since the last digest are
    # the window in which someone holding the database and the secret key could still rewrite unnoticed.
    interval_seconds: float = Field(60.0, ge=1, le=86400)
    # A directory on storage the database's administrators cannot write (a separate host or a WORM mount).
    directory: Path | None = None
    s3: AuditS3Sink | None = None

    @field_validator("signing_key", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        value = resolve_secret(value)
        if value is None:
            return value
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        try:
            key = load_pem_private_key(raw.encode(), password=None)
        except (ValueError, TypeError):
            raise ValueError("is not a PEM private key (make one with `openssl genpkey -algorithm ed25519`)") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("must be an Ed25519 key (`openssl genpkey -algorithm ed25519`)")
        return value

    @model_validator(mode="after")
    def _complete(self) -> AuditAnchorSettings:
        sinks = self.directory is not None or self.s3 is not None
        if sinks and self.signing_key is None:
            raise ValueError("directory or s3 needs signing_key (env:NAME or file:/path to an Ed25519 PEM)")
        if self.signing_key is not None and not sinks:
            raise ValueError("signing_key needs somewhere to write digests: directory and/or s3")
        return self

    @property
    def enabled(self) -> bool:
        return self.signing_key is not None


class AuditSettings(Strict):
    """The audit trail's sealer (``broker.audit``) and its external anchors."""

    # Every broker process runs a sealer this often; one at a time does the work.
    seal_interval_seconds: float = Field(1.0, gt=0, le=300)
    # An event older than interval + grace and still unsealed makes `broker audit verify` fail.
    seal_grace_seconds: float = Field(30.0, ge=1, le=3600)
    seal_batch: int = Field(5000, ge=1, le=100000)
    anchor: AuditAnchorSettings = AuditAnchorSettings()

    @property
    def seal_window_seconds(self) -> float:
        return self.seal_interval_seconds + self.seal_grace_seconds


# ---------------------------------------------------------------- SCIM 2.0 provisioning


class ScimClientConfig(Strict):
    """A provisioning client: an IdP's SCIM connector (Okta, Entra ID) that creates and retires the people of
    one identity store (``broker.scim``). Its bearer token is a master key, so only its SHA-256 is configured."""

    name: str = Field(pattern=_NAME.pattern)
    # "sha256:<64 hex>" of the client's bearer token, printed by `broker scim token`. The token carries 256
    # random bits, so a fast hash is safe here (nothing to brute-force) and keeps each request cheap.
    token_hash: Secret
    # The identity store whose people this client provisions (an OIDC, SAML or local store name).
    store: str = Field(pattern=_NAME.pattern)
    # How a sign-in from ``store`` finds its provisioned user: the identity's username, e-mail or subject
    # equals the SCIM userName (username, email, case-insensitive) or externalId (subject, exact).
    match: Literal["username", "email", "subject"] = "username"
    # True: a sign-in from ``store`` with no active provisioned user is refused (deprovisioned means out).
    required: bool = True
    # Whether this client may create, change and delete groups and memberships (False: users only).
    groups: bool = False
    # With ``groups``: the group displayNames it may manage; empty means any group of its store.
    allowed_groups: list[str] = []
    # scim: provisioned groups replace the IdP's groups at every decision (a removal takes effect even while
    # the sign-in that asserted the old groups lasts); merge: the IdP's groups from sign-in are kept as well.
    groups_from: Literal["scim", "merge"] = "scim"

    @field_validator("token_hash", mode="before")
    @classmethod
    def _hash(cls, value: Any) -> Any:
        value = resolve_secret(value)
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", raw):
            raise ValueError("must be sha256:<64 hex digits>; make a token and its hash with `broker scim token`")
        return value


class ScimSettings(Strict):
    """SCIM 2.0 provisioning at ``/scim/v2`` (RFC 7643, RFC 7644). No clients: the endpoint is not served."""

    clients: list[ScimClientConfig] = []
    # The largest page a list or filter answers (RFC 7644 section 3.4.2.4 count is capped to this).
    max_results: int = Field(100, ge=1, le=1000)
    # Longer filter expressions are refused before parsing (IdPs send short ones: userName eq "x").
    max_filter_length: int = Field(512, ge=64, le=8192)

    @model_validator(mode="after")
    def _unique(self) -> ScimSettings:
        problems = []
        for key in ("name", "store"):
            values = [getattr(c, key) for c in self.clients]
            if len(set(values)) != len(values):
                problems.append(f"clients: each {key} may appear once")
        hashes = [c.token_hash.get_secret_value() for c in self.clients]
        if len(set(hashes)) != len(hashes):
            problems.append("clients: every client needs its own token")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Settings(BaseSettings):
    """The whole broker configuration. Build it with :func:`load_settings`; pass it to ``create_app``."""

    model_config = SettingsConfigDict(env_prefix="BROKER_", env_nested_delimiter="__", extra="forbid", frozen=True)

    mode: Literal["production", "dev"] = "production"
    public_url: str = "http://127.0.0.1:8000"
    database_url: str = "sqlite:///var/broker.db"
    # Root secret from which the audit-chain, value-HMAC, session, CSRF and encryption keys are derived: a
    # keyring of one key with id "k0" (broker.keys). To rotate it, list several in secret_keys instead.
    secret_key: Secret | None = None
    # The keyring, newest first: the first key writes, every listed key reads (docs/operations.md, "Rotating
    # secret_key"). Set either this or secret_key.
    secret_keys: list[RootKeySetting] = []
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    session: SessionSettings = SessionSettings()
    aws: AwsSettings = AwsSettings()
    identity_stores: list[IdentityStoreConfig] = []
    roles: list[RoleConfig] = []
    oauth: OAuthSettings = OAuthSettings()
    mfa: MfaSettings = MfaSettings()
    admin: AdminSettings = AdminSettings()
    notifications: NotificationSettings = NotificationSettings()
    alerts: AlertSettings = AlertSettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    server: ServerSettings = ServerSettings()
    audit: AuditSettings = AuditSettings()
    devices: DeviceSettings = DeviceSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    scim: ScimSettings = ScimSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the YAML file (which arrives as init arguments).
        return env_settings, init_settings, file_secret_settings

    @field_validator("secret_key", mode="before")
    @classmethod
    def _secret(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        value = resolve_secret(value)
        _check_root_secret(value, dev=info.data.get("mode") == "dev")
        return value

    @field_validator("secret_keys")
    @classmethod
    def _secrets(cls, value: list[RootKeySetting], info: ValidationInfo) -> list[RootKeySetting]:
        ids = [key.id for key in value]
        if len(set(ids)) != len(ids):
            raise ValueError("every key needs its own id")
        for key in value:
            try:
                _check_root_secret(key.value, dev=info.data.get("mode") == "dev")
            except ValueError as exc:
                raise ValueError(f"key {key.id}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_keyring(self) -> Settings:
        if (self.secret_key is None) == (not self.secret_keys):
            raise ValueError(
                "set secret_key (one key) or secret_keys (a list of {id, value}, newest first), not both or neither"
            )
        return self

    @property
    def root_keys(self) -> list[tuple[str, SecretStr]]:
        """The keyring as (id, secret), newest first; a plain secret_key is the one key "k0" (broker.keys)."""
        if self.secret_key is not None:
            return [("k0", self.secret_key)]
        return [(key.id, key.value) for key in self.secret_keys]

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/?#]+(/[^?#]*)?$", value):
            raise ValueError("must be an absolute http(s) URL without query, e.g. https://broker.example.com")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _references(self) -> Settings:
        problems = reference_problems(self.model_dump(mode="json"))
        for problem in self._typed_problems():
            where, _, what = problem.partition(": ")
            problems.append((where, what))
        if problems:
            raise ValueError("; ".join(f"{where}: {problem}" for where, problem in problems))
        return self

    def _typed_problems(self) -> list[str]:
        """Cross-checks that need the typed sections (certificates, directories, provisioning), as "path: problem"."""
        problems = []
        if self.devices.tls_client_ca_file is not None and self.server.tls_cert_file is None:
            problems.append(
                "devices.tls_client_ca_file: needs server.tls_cert_file and tls_key_file (TLS at the broker)"
            )
        problems += self._directory_problems()
        for index, client in enumerate(self.scim.clients):
            if client.store not in [s.name for s in self.identity_stores]:
                problems.append(f"scim.clients[{index}].store: unknown identity store {client.store!r}")
        return problems

    def _directory_problems(self) -> list[str]:
        """LDAP transport security and home realm discovery: domains owned once, a usable fallback."""
        problems = []
        for index, store in enumerate(self.identity_stores):
            if isinstance(store, LdapStoreConfig) and not store.encrypted and self.mode != "dev":
                problems.append(
                    f"identity_stores[{index}]: {store.url} sends passwords in clear text; use ldaps:// "
                    "or start_tls: true (plain ldap:// only in dev mode)"
                )
        owners: dict[str, str] = {}
        for store in self.identity_stores:
            for domain in getattr(store, "domains", []):
                if domain in owners and owners[domain] != store.name:
                    problems.append(f"identity_stores: domain {domain} is listed by {owners[domain]} and {store.name}")
                owners.setdefault(domain, store.name)
        fallback = self.discovery.fallback_store
        if fallback is not None:
            target = self.store(fallback)
            if target is None:
                problems.append(f"discovery.fallback_store: unknown identity store {fallback!r}")
            elif target.type == "local":
                problems.append("discovery.fallback_store: break-glass accounts cannot be the fallback")
        if self.discovery.enabled and not owners and fallback is None:
            problems.append("discovery.enabled: list domains on an identity store (or set fallback_store)")
        return problems

    @property
    def dev(self) -> bool:
        return self.mode == "dev"

    def store(self, name: str) -> IdentityStoreConfig | None:
        return next((s for s in self.identity_stores if s.name == name), None)

    def role(self, name: str) -> RoleConfig | None:
        return next((r for r in self.roles if r.name == name), None)


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _named(items: Any) -> list[dict[str, Any]]:
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def reference_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Checks across sections (names unique, grant rules naming known stores, HTTPS), as (YAML path, problem).

    Works on plain data, so ``load_settings`` can report these beside field errors in the same pass: a
    malformed field elsewhere must not hide them until the next run.
    """
    problems: list[tuple[str, str]] = []
    oauth, aws, session = _section(data, "oauth"), _section(data, "aws"), _section(data, "session")
    store_names = [s.get("name") for s in _named(data.get("identity_stores"))]
    if len(set(store_names)) != len(store_names):
        problems.append(("identity_stores", "names must be unique"))
    issuers = _named(oauth.get("workload_issuers"))
    workload_names = [i.get("name") for i in issuers]
    if set(workload_names) & set(store_names):
        problems.append(("oauth.workload_issuers", "names must differ from identity_stores names"))
    known = set(store_names) | set(workload_names)
    public_url = str(data.get("public_url") or "http://127.0.0.1:8000").rstrip("/")
    if any(i.get("issuer") == public_url for i in issuers):
        # The broker's own tokens must never come back as workload tokens (token-type confusion).
        problems.append(("oauth.workload_issuers", "the broker's own public_url cannot be a workload issuer"))
    tokens = _section(oauth, "tokens")
    if aws.get("mode") == "web_identity" and tokens.get("algorithm", "ES256") != "ES256":
        problems.append(("aws.mode", "web_identity needs oauth.tokens.algorithm ES256 (STS does not accept EdDSA)"))
    sections = [("roles", _named(data.get("roles"))), ("oauth.audiences", _named(oauth.get("audiences")))]
    for section, items in sections:
        for index, item in enumerate(items):
            for rule in _named(item.get("grant")):
                stores = rule.get("stores")
                for store in stores if isinstance(stores, list) else []:
                    if store not in known:
                        problems.append((f"{section}[{index}].grant", f"unknown identity store {store!r}"))
    role_names = [r.get("name") for r in _named(data.get("roles"))]
    if len(set(role_names)) != len(role_names):
        problems.append(("roles", "names must be unique"))
    if (
        data.get("mode", "production") != "dev"
        and not public_url.startswith("https://")
        and session.get("cookie_secure", True) is not False
    ):
        problems.append(("public_url", "must be https:// when session.cookie_secure is true"))
    return problems


def _yaml_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or part in {"local", "oidc", "saml", "x509", "ldap", "json-or-python"}:
            continue
        else:
            path += f".{part}" if path else part
    return path or "(top level)"


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError([(str(path), f"cannot read: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([(str(path), f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([(str(path), "must be a YAML mapping at the top level")])
    return data


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Load, override from the environment, validate; raise ConfigError listing every problem."""
    data = read_yaml(Path(path)) if path else {}
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            problems.append((_yaml_path(err["loc"]), msg))
        # Field errors stop pydantic before the cross-section checks; run those too, in the same report.
        for key in ("mode", "public_url"):
            if f"BROKER_{key.upper()}" in os.environ:
                data[key] = os.environ[f"BROKER_{key.upper()}"]
        for where, problem in reference_problems(data):
            joined = f"{where}: {problem}"
            if not any(joined in f"{w}: {p}" or problem in p for w, p in problems):
                problems.append((where, problem))
        raise ConfigError(problems) from None
