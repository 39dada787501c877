"""How the broker runs: browser sessions, AWS, rate limits, the HTTP server and TLS, administration,
notifications and alerts, the factors the broker holds itself, the audit trail's sealing and anchors, and SCIM
provisioning."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from broker.identity import MfaLevel
from broker.settings.base import NAME, Strict, parse_mfa
from broker.settings.roles import GrantRule
from broker.settings.secrets import Secret, check_encryption_keys, resolve_secret, secret_text


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
        return parse_mfa(value)


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
        return check_encryption_keys(value)

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
        from broker.certificates import ed25519_private_key_problem

        problem = ed25519_private_key_problem(secret_text(value))
        if problem is not None:
            raise ValueError(problem)
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

    name: str = Field(pattern=NAME.pattern)
    # "sha256:<64 hex>" of the client's bearer token, printed by `broker scim token`. The token carries 256
    # random bits, so a fast hash is safe here (nothing to brute-force) and keeps each request cheap.
    token_hash: Secret
    # The identity store whose people this client provisions (an OIDC, SAML or local store name).
    store: str = Field(pattern=NAME.pattern)
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
        raw = secret_text(value)
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
