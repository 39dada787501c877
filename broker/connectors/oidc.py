"""OpenID Connect relying party: the only user of Authlib's OAuth 2.0 client.

Implements the authorization code flow of OpenID Connect Core 1.0 (section 3.1) with PKCE S256 (RFC 7636),
the authorization server issuer identification of RFC 9207 (mix-up defence), discovery (OpenID Connect
Discovery 1.0 section 4), ID token validation (Core section 3.1.3.7), optional userinfo (Core 5.3) and
RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0). ``state``, ``nonce`` and the PKCE verifier are
generated here and kept server-side by the use-case layer; this module never touches the database.

The broker is deliberately stricter than the specs' SHOULDs: algorithms are pinned by configuration (asymmetric
only), the header policy, key cache and claim registry are ``broker.jose``'s (key-reference headers and
``crit`` refused, an unknown ``kid`` refreshes the JWKS at most once per :data:`JWKS_REFRESH_INTERVAL`), and
tokens larger than the configured limit are refused before they are decoded. Every request goes through
``broker.http`` (timeouts, size cap, TLS); Authlib's own client is built with the same policy.
"""

from __future__ import annotations

import secrets
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from authlib.integrations.base_client import OAuthError

with warnings.catch_warnings():
    # Authlib warns, on import, that it would rather drive httpx2 than httpx; ``broker.http`` builds its client
    # options for either and catches either's errors, so the notice is for the maintainers, not for every
    # `broker` command's terminal. Only this one message is silenced, only during this import.
    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
    from authlib.integrations.httpx_client import OAuth2Client
from broker import jose
from broker.errors import AuthenticationFailed, BrokerError, MfaRequired, ServiceUnavailable
from broker.http import TRANSPORT_ERRORS, HttpClient, HttpPolicy, UpstreamTooLarge, UpstreamUnavailable, report_call
from broker.identity import Identity, MfaEvidence, MfaLevel
from broker.settings import MfaMapping, OidcStoreConfig

# Discovery documents and key sets change rarely; an hour bounds how long a rotated-out key stays trusted.
DISCOVERY_TTL_SECONDS = 3600
JWKS_TTL_SECONDS = 3600
# An unknown ``kid`` refreshes the JWKS at most this often, so forged kids cannot turn the broker into a
# request amplifier against the IdP: an unknown kid gets one rate-limited refresh.
JWKS_REFRESH_INTERVAL = 60.0
# An authorization request in flight lives this long: enough to type a password and answer an MFA prompt.
LOGIN_REQUEST_TTL_SECONDS = 600
# ID tokens are redeemed right after they are issued; an older ``iat`` means a stored or replayed token.
ID_TOKEN_MAX_AGE_SECONDS = 600
# Discovery, JWKS and userinfo responses larger than this are refused (they are a few kB in practice).
MAX_DOCUMENT_BYTES = 512 * 1024
# jose's neutral refusal codes and claim failures as this connector's audit reasons.
_REFUSALS = {
    "oversized": "token_too_large",
    "malformed": "token_malformed",
    "alg_none": "alg_not_allowed",
    "alg_not_allowed": "alg_not_allowed",
    "crit": "crit_unsupported",
    "key_reference": "key_reference_header",
    "bad_kid": "kid_invalid",
    "unknown_kid": "kid_unknown",
    "key_alg_mismatch": "kid_unknown",
    "ambiguous_kid": "kid_ambiguous",
    "bad_signature": "signature_invalid",
}
# By claim, or by "claim:problem" where the problem has its own reason; any other claim is "<claim>_invalid".
_CLAIM_REFUSALS = {
    **{claim: f"{claim}_mismatch" for claim in ("iss", "aud", "azp", "nonce")},
    "exp:expired": "token_expired",
    "auth_time:too_old": "auth_time_stale",
}
_CLAIM_MESSAGES = {
    "token_expired": "The sign-in took too long or the clocks differ. Start the sign-in again.",
    "auth_time_stale": "The identity provider did not ask you to sign in again.",
}


def _refuse(reason: str, message: str | None = None) -> AuthenticationFailed:
    return AuthenticationFailed(
        message or "The identity provider's answer could not be verified. Start the sign-in again.",
        reason=f"oidc.{reason}",
    )


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of the discovery document the broker uses (OpenID Connect Discovery 1.0 section 3)."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None
    # RFC 9207 section 3: when advertised, every authorization response must carry ``iss``.
    iss_parameter_supported: bool


@dataclass(frozen=True)
class AuthorizationRequest:
    """One authorization request: the URL for the browser and the secrets the broker keeps server-side."""

    url: str
    state: str
    nonce: str
    code_verifier: str
    acr_values: tuple[str, ...]
    max_age: int | None
    requested_at: float

    def stored(self) -> dict[str, Any]:
        """What the login_requests row keeps (never sent to the browser)."""
        return {
            "nonce": self.nonce,
            "code_verifier": self.code_verifier,
            "acr_values": list(self.acr_values),
            "max_age": self.max_age,
            "requested_at": self.requested_at,
        }


@dataclass(frozen=True)
class VerifiedIdToken:
    """An ID token whose signature and claims passed :func:`verify_id_token`. Nothing else builds one."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]


@dataclass(frozen=True)
class OidcLogin:
    identity: Identity
    acr: str | None


def verify_id_token(
    token: str, *, keys: jose.JwksCache, rules: jose.ClaimRules, algorithms: Sequence[str], max_bytes: int, now: float
) -> VerifiedIdToken:
    """Validate an ID token as OpenID Connect Core 1.0 section 3.1.3.7 requires, strictly.

    Every claim is required, checked, or explicitly ignored (``rules`` from :meth:`OidcConnector.complete`):
    ``iss`` exact, ``aud`` contains the client (and ``azp`` names it when present or when there are several
    audiences), ``exp``/``iat``/``sub`` required, ``nbf`` and ``auth_time`` honoured, ``nonce`` equal to the
    one sent.
    """
    try:
        header, claims = jose.verify(token, keys=keys, algorithms=algorithms, max_bytes=max_bytes, rules=rules, now=now)
    except jose.Refused as refusal:
        if refusal.code == "malformed" and len(token.split(".")) != 3:
            raise _refuse("token_malformed", "Encrypted or malformed ID tokens are not accepted.") from None
        raise _refuse(_REFUSALS[refusal.code]) from None
    except jose.ClaimRefused as refused:
        claim = refused.claim
        reason = _CLAIM_REFUSALS.get(f"{claim}:{refused.problem}") or _CLAIM_REFUSALS.get(claim, f"{claim}_invalid")
        raise _refuse(reason, _CLAIM_MESSAGES.get(reason)) from None
    return VerifiedIdToken(header=header, claims=claims)


def mfa_level(amr: Sequence[str], acr: str | None, *, amr_map: MfaMapping, acr_map: MfaMapping) -> MfaLevel:
    """The strongest level any asserted ``amr`` (RFC 8176) or ``acr`` value maps to; NONE if none does."""
    level = MfaLevel.NONE
    for mapping, values in ((amr_map, set(amr)), (acr_map, {acr} if acr else set())):
        if values & set(mapping.phishing_resistant):
            level = max(level, MfaLevel.PHISHING_RESISTANT)
        elif values & set(mapping.mfa):
            level = max(level, MfaLevel.MFA)
    return level


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _refuse("claim_invalid", f"The identity provider sent an invalid {name} claim.")
    if "\x00" in value:
        # PostgreSQL cannot store NUL, and a NUL lets two different names compare equal in C libraries.
        raise _refuse("claim_invalid", f"The identity provider sent a {name} claim with a NUL character.")
    return value


def identity_from_claims(
    config: OidcStoreConfig, id_token: VerifiedIdToken, userinfo: Mapping[str, Any] | None = None
) -> Identity:
    """Map verified claims to one Identity. ID-token claims win; userinfo only fills the gaps."""
    token = id_token.claims
    claims = {**(userinfo or {}), **token}
    subject = _text(token["sub"], "sub")
    username = _text(claims.get(config.username_claim) or subject, config.username_claim)
    email: str | None = None
    if claims.get(config.email_claim) is not None and claims.get("email_verified") is not False:
        email = _text(claims[config.email_claim], config.email_claim)
    raw_groups = claims.get(config.groups_claim) or []
    raw_groups = [raw_groups] if isinstance(raw_groups, str) else raw_groups
    if not isinstance(raw_groups, list):
        raise _refuse("claim_invalid", f"The identity provider sent an invalid {config.groups_claim} claim.")
    groups = frozenset(_text(g, config.groups_claim) for g in raw_groups)
    attributes = {name: _text(claims[name], name) for name in config.attribute_claims if claims.get(name) is not None}
    amr_raw = token.get("amr") or []
    if not isinstance(amr_raw, list):
        raise _refuse("claim_invalid", "The identity provider sent an invalid amr claim.")
    amr = tuple(_text(v, "amr") for v in amr_raw)
    acr = _text(token["acr"], "acr") if token.get("acr") is not None else None
    if acr is not None:
        attributes["acr"] = acr
    auth_time = token.get("auth_time")
    at = token["iat"] if not isinstance(auth_time, int | float) else auth_time
    return Identity(
        subject=subject,
        issuer=config.issuer,
        store=config.name,
        username=username,
        email=email,
        groups=groups,
        attributes=attributes,
        mfa=MfaEvidence(
            level=mfa_level(amr, acr, amr_map=config.amr, acr_map=config.acr),
            methods=amr,
            authenticated_at=datetime.fromtimestamp(float(at), UTC),
        ),
    )


class OidcConnector:
    """One configured OpenID Provider."""

    kind = "oidc"

    def __init__(
        self,
        config: OidcStoreConfig,
        *,
        redirect_uri: str,
        post_logout_redirect_uri: str,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.redirect_uri = redirect_uri
        self.post_logout_redirect_uri = post_logout_redirect_uri
        self._clock = clock
        timeout = config.timeout_seconds
        self._policy = HttpPolicy(
            connect_seconds=timeout, read_seconds=timeout, max_bytes=MAX_DOCUMENT_BYTES, trust_env=True, peer="oidc"
        )
        self._http = HttpClient(self._policy)
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._lock = threading.Lock()
        self.keys = jose.JwksCache(
            http=self._http,
            uri=lambda: self.metadata().jwks_uri,
            ttl_seconds=JWKS_TTL_SECONDS,
            refresh_floor_seconds=JWKS_REFRESH_INTERVAL,
            max_bytes=MAX_DOCUMENT_BYTES,
            monotonic=monotonic,
        )

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def display_name(self) -> str:
        return self.config.display_name

    def close(self) -> None:
        self._http.close()

    def _get_json(self, url: str, what: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        try:
            response = self._http.get(url, headers={"Accept": "application/json", **(headers or {})})
        except UpstreamTooLarge:
            raise _refuse(f"{what}_too_large") from None
        except UpstreamUnavailable:
            raise self._unreachable(what) from None
        if response.status != 200:
            if what == "userinfo":
                raise _refuse("userinfo_failed")
            raise self._unreachable(what)
        try:
            value = response.json()
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise _refuse(f"{what}_invalid")
        return value

    def _unreachable(self, what: str) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"{self.config.display_name} is not answering right now. Try again in a minute.",
            reason=f"oidc.{what}_unavailable",
            retry_after=30,
        )

    def metadata(self) -> ProviderMetadata:
        """The discovery document, cached; its issuer must equal the configured one exactly."""
        with self._lock:
            if self._metadata is not None and self._clock() - self._metadata_at < DISCOVERY_TTL_SECONDS:
                return self._metadata
            doc = self._get_json(self.config.issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery")
            if doc.get("issuer") != self.config.issuer:
                raise ServiceUnavailable(
                    f"{self.config.display_name} is misconfigured: its discovery document names another issuer.",
                    reason="oidc.discovery_issuer_mismatch",
                )
            try:
                metadata = ProviderMetadata(
                    issuer=doc["issuer"],
                    authorization_endpoint=str(doc["authorization_endpoint"]),
                    token_endpoint=str(doc["token_endpoint"]),
                    jwks_uri=str(doc["jwks_uri"]),
                    userinfo_endpoint=doc.get("userinfo_endpoint"),
                    end_session_endpoint=doc.get("end_session_endpoint"),
                    iss_parameter_supported=doc.get("authorization_response_iss_parameter_supported") is True,
                )
            except KeyError as exc:
                raise ServiceUnavailable(
                    f"{self.config.display_name} is misconfigured: discovery lacks {exc.args[0]}.",
                    reason="oidc.discovery_invalid",
                ) from None
            self._metadata, self._metadata_at = metadata, self._clock()
            return metadata

    # ---------------------------------------------------------------- the flow

    def _oauth_client(self) -> OAuth2Client:
        secret = self.config.client_secret.get_secret_value() if self.config.client_secret else None
        client = OAuth2Client(
            client_id=self.config.client_id,
            client_secret=secret,
            token_endpoint_auth_method=self.config.client_auth,
            scope=" ".join(self.config.scopes),
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            **self._policy.client_options(),
        )
        if self.config.client_auth == "private_key_jwt":
            client.register_client_auth_method(("private_key_jwt", self._private_key_jwt))
        return client

    def _private_key_jwt(
        self, client: Any, method: str, uri: str, headers: Any, body: str | bytes
    ) -> tuple[str, Any, bytes]:
        """RFC 7523 section 2.2 client authentication, signed with joserfc (authlib.jose is deprecated)."""
        assert self.config.private_key is not None
        assertion = jose.client_assertion(
            client_id=self.config.client_id,
            audience=uri,
            pem=self.config.private_key.get_secret_value(),
            alg=self.config.private_key_alg,
            kid=self.config.private_key_id,
            now=self._clock(),
        )
        extra = urlencode(
            {
                "client_id": self.config.client_id,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            }
        )
        form = body.decode() if isinstance(body, bytes) else body
        return uri, headers, (f"{form}&{extra}" if form else extra).encode()

    def authorization_request(
        self, *, acr_values: Sequence[str] = (), max_age: int | None = None, login_hint: str | None = None
    ) -> AuthorizationRequest:
        """A fresh request with new ``state``, ``nonce`` and PKCE verifier (RFC 7636 section 4.1: 256 bits).

        ``login_hint`` (OpenID Connect Core 1.0 section 3.1.2.1) is the address home realm discovery was given,
        so the IdP can skip asking for it again.
        """
        metadata = self.metadata()
        state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48)
        extra: dict[str, Any] = {"nonce": nonce}
        if login_hint:
            extra["login_hint"] = login_hint
        if acr_values:
            extra["acr_values"] = " ".join(acr_values)
        if max_age is not None:
            extra["max_age"] = max_age
        with self._oauth_client() as client:
            url, _ = client.create_authorization_url(
                metadata.authorization_endpoint, state=state, code_verifier=verifier, **extra
            )
        return AuthorizationRequest(
            url=url,
            state=state,
            nonce=nonce,
            code_verifier=verifier,
            acr_values=tuple(acr_values),
            max_age=max_age,
            requested_at=self._clock(),
        )

    def complete(self, params: Mapping[str, str], stored: Mapping[str, Any]) -> OidcLogin:
        """Finish the flow from the callback parameters and the stored request (state already matched)."""
        metadata = self.metadata()
        iss = params.get("iss")
        # RFC 9207 section 2.4: compare iss when present; require it when the provider advertises it.
        if iss is not None and iss != metadata.issuer:
            raise _refuse("iss_parameter_mismatch", "This answer came from a different identity provider.")
        if iss is None and metadata.iss_parameter_supported:
            raise _refuse("iss_parameter_missing")
        if "error" in params:
            error = params["error"][:64]
            if error == "unmet_authentication_requirements" or (stored.get("acr_values") and error != "access_denied"):
                raise MfaRequired(
                    f"{self.config.display_name} could not provide the stronger sign-in this role needs.",
                    reason="oidc.step_up_unavailable",
                )
            message = (
                "The sign-in was cancelled."
                if error == "access_denied"
                else f"{self.config.display_name} refused the sign-in ({error}). Try again or ask the help desk."
            )
            raise AuthenticationFailed(message, reason=f"oidc.idp_error.{error}")
        code = params.get("code")
        if not code:
            raise _refuse("code_missing")
        # Authlib makes this request itself, so its latency is reported here (broker.http.report_call).
        started, outcome = time.perf_counter(), "ok"
        try:
            with self._oauth_client() as client:
                token = client.fetch_token(
                    metadata.token_endpoint,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=stored["code_verifier"],
                    redirect_uri=self.redirect_uri,
                )
        except OAuthError as exc:
            outcome = "refused"
            raise _refuse(
                "token_error", f"The identity provider did not accept the sign-in ({exc.error}). Start again."
            ) from None
        except TRANSPORT_ERRORS:
            outcome = "unreachable"
            raise self._unreachable("token") from None
        except ValueError:
            outcome = "invalid"
            raise _refuse("token_response_invalid") from None
        finally:
            report_call("oidc_token", time.perf_counter() - started, outcome)
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise _refuse("id_token_missing")
        try:
            rules = jose.ClaimRules(
                issuer=metadata.issuer,
                audiences=(self.config.client_id,),
                required=("exp", "iat", "sub"),
                leeway=self.config.clock_skew_seconds,
                max_age_seconds=ID_TOKEN_MAX_AGE_SECONDS,
                authorized_party=self.config.client_id,
                nonce=str(stored["nonce"]),
                max_auth_age=stored.get("max_age"),
                auth_after=stored.get("requested_at"),
            )
            verified = verify_id_token(
                id_token,
                keys=self.keys,
                rules=rules,
                algorithms=self.config.algorithms,
                max_bytes=self.config.max_id_token_bytes,
                now=self._clock(),
            )
        except jose.JwksUnavailable as failure:
            if failure.code == "unavailable":
                raise self._unreachable("jwks") from None
            raise _refuse(f"jwks_{failure.code}") from None
        userinfo = None
        if self.config.userinfo and metadata.userinfo_endpoint:
            access_token = token.get("access_token")
            if not isinstance(access_token, str):
                raise _refuse("access_token_missing")
            userinfo = self._get_json(
                metadata.userinfo_endpoint, "userinfo", headers={"Authorization": f"Bearer {access_token}"}
            )
            # Core 5.3.2: the userinfo sub MUST equal the ID token's sub, or the response must not be used.
            if userinfo.get("sub") != verified.claims["sub"]:
                raise _refuse("userinfo_sub_mismatch")
        identity = identity_from_claims(self.config, verified, userinfo)
        return OidcLogin(identity=identity, acr=identity.attributes.get("acr"))

    def step_up_acr_values(self, level: MfaLevel) -> list[str]:
        """acr_values that ask the IdP for at least ``level``; empty when the IdP cannot step up to it."""
        mapping = self.config.step_up_acr_values
        if level == MfaLevel.PHISHING_RESISTANT:
            return list(mapping.phishing_resistant)
        if level == MfaLevel.MFA:
            return list(mapping.mfa)
        return []

    def end_session_url(self) -> str | None:
        """RP-initiated logout at the IdP (RP-Initiated Logout 1.0 section 2), when it offers it."""
        if not self.config.rp_logout:
            return None
        try:
            endpoint = self.metadata().end_session_endpoint
        except BrokerError:
            return None
        if not endpoint:
            return None
        query = urlencode(
            {"client_id": self.config.client_id, "post_logout_redirect_uri": self.post_logout_redirect_uri}
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"
