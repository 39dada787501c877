"""The token endpoint: trusted workload issuers, confidential clients, internal audiences, the broker's own
signing keys and tokens, and the credential helper's sign-in (RFC 6749, RFC 7523, RFC 8628, RFC 8693)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from broker.settings.base import NAME, Strict, https_or_loopback
from broker.settings.roles import GrantRule
from broker.settings.secrets import MIN_SECRET_LENGTH, Secret, resolve_secret

WORKLOAD_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
WorkloadAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105


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

    name: str = Field(pattern=NAME.pattern)
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
        return https_or_loopback(value) if value is not None else None

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
        return https_or_loopback(value) if value is not None else None

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
