"""OpenID Connect relying party: the only user of Authlib's OAuth 2.0 client and of joserfc's JWT verifier.

Implements the authorization code flow of OpenID Connect Core 1.0 (section 3.1) with PKCE S256 (RFC 7636),
the authorization server issuer identification of RFC 9207 (mix-up defence), discovery (OpenID Connect
Discovery 1.0 section 4), ID token validation (Core section 3.1.3.7), optional userinfo (Core 5.3) and
RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0). ``state``, ``nonce`` and the PKCE verifier are
generated here and kept server-side by the use-case layer; this module never touches the database.

The broker is deliberately stricter than the specs' SHOULDs: algorithms are pinned by configuration (asymmetric
only), ``jku``/``x5u``/``jwk`` headers are refused (never fetched), ``crit`` is refused (no extension is
understood), an unknown ``kid`` triggers at most one JWKS refresh per :data:`JWKS_REFRESH_INTERVAL`, and
tokens larger than the configured limit are refused before they are decoded.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.integrations.base_client import OAuthError

with warnings.catch_warnings():
    # Authlib warns, on import, that it would rather drive httpx2 than httpx; the broker's HTTP stack is httpx
    # (its errors are caught below), so the notice is for the maintainers, not for every `broker` command's
    # terminal. Only this one message is silenced, only during this import.
    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
    from authlib.integrations.httpx_client import OAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey

from broker.errors import AuthenticationFailed, BrokerError, MfaRequired, ServiceUnavailable
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
_KEY_REFERENCE_HEADERS = ("jku", "x5u", "jwk")
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
PublicKey = RSAKey | ECKey | OKPKey


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


def _json_segment(segment: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _refuse("token_malformed") from None
    if not isinstance(value, dict):
        raise _refuse("token_malformed")
    return value


class JwksCache:
    """The IdP's signing keys, cached, with at most one refresh per interval when a ``kid`` is unknown."""

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, Any]],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        refresh_interval: float = JWKS_REFRESH_INTERVAL,
    ) -> None:
        self._fetch = fetch
        self._monotonic = monotonic
        self._refresh_interval = refresh_interval
        self._keys: list[PublicKey] = []
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        document = self._fetch()
        keys: list[PublicKey] = []
        for item in document.get("keys", []) if isinstance(document.get("keys"), list) else []:
            if not isinstance(item, dict) or item.get("use", "sig") != "sig" or "d" in item:
                continue
            try:
                key = JWKRegistry.import_key(item)
            except (JoseError, ValueError, TypeError):
                continue  # an unsupported key type must not break the others
            if isinstance(key, RSAKey | ECKey | OKPKey):
                keys.append(key)
        self._keys = keys
        self._fetched_at = self._monotonic()

    def _candidates(self, kid: str | None, alg: str) -> list[PublicKey]:
        kty = _KEY_TYPES.get(alg[:2])
        return [
            key
            for key in self._keys
            if key.key_type == kty and (kid is None or key.kid == kid) and key.get("alg") in (None, alg)
        ]

    def key_for(self, kid: str | None, alg: str) -> PublicKey:
        """The one key that may have signed a token with this header, or AuthenticationFailed."""
        with self._lock:
            now = self._monotonic()
            if self._fetched_at is None or now - self._fetched_at > JWKS_TTL_SECONDS:
                self._load()
            found = self._candidates(kid, alg)
            if not found and kid is not None and now - (self._fetched_at or 0) >= self._refresh_interval:
                self._load()  # key rotation: one refresh, rate-limited
                found = self._candidates(kid, alg)
        if not found:
            raise _refuse("kid_unknown")
        if len(found) > 1:
            raise _refuse("kid_ambiguous")
        return found[0]


def verify_id_token(
    token: str,
    *,
    keys: JwksCache,
    issuer: str,
    client_id: str,
    nonce: str,
    algorithms: Sequence[str],
    now: float,
    skew: int,
    max_bytes: int,
    max_age: int | None = None,
    requested_at: float | None = None,
) -> VerifiedIdToken:
    """Validate an ID token as OpenID Connect Core 1.0 section 3.1.3.7 requires, strictly.

    Every claim is required, checked, or explicitly ignored: ``iss`` exact, ``aud`` contains the client (and
    ``azp`` names it when present or when there are several audiences), ``exp``/``iat`` required, ``nbf`` and
    ``auth_time`` honoured, ``nonce`` equal to the one sent, ``sub`` a non-empty string.
    """
    if len(token) > max_bytes:
        raise _refuse("token_too_large")
    parts = token.split(".")
    if len(parts) != 3:
        raise _refuse("token_malformed", "Encrypted or malformed ID tokens are not accepted.")
    header = _json_segment(parts[0])
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise _refuse("alg_not_allowed")
    if any(name in header for name in _KEY_REFERENCE_HEADERS):
        raise _refuse("key_reference_header")
    if "crit" in header:
        raise _refuse("crit_unsupported")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= 256 or not kid.isprintable()):
        raise _refuse("kid_invalid")
    key = keys.key_for(kid, alg)
    try:
        decoded = jwt.decode(token, key, algorithms=[alg])
    except (JoseError, ValueError):
        raise _refuse("signature_invalid") from None
    claims = decoded.claims

    if claims.get("iss") != issuer:
        raise _refuse("iss_mismatch")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or client_id not in audiences:
        raise _refuse("aud_mismatch")
    azp = claims.get("azp")
    if (azp is not None or len(audiences) > 1) and azp != client_id:
        raise _refuse("azp_mismatch")

    def number(name: str, *, required: bool) -> float | None:
        value = claims.get(name)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _refuse(f"{name}_invalid")
        return float(value)

    exp = number("exp", required=True)
    iat = number("iat", required=True)
    assert exp is not None and iat is not None
    if now >= exp + skew:
        raise _refuse("token_expired", "The sign-in took too long or the clocks differ. Start the sign-in again.")
    if iat > now + skew or iat < now - ID_TOKEN_MAX_AGE_SECONDS - skew:
        raise _refuse("iat_invalid")
    nbf = number("nbf", required=False)
    if nbf is not None and nbf > now + skew:
        raise _refuse("nbf_invalid")
    token_nonce = claims.get("nonce")
    if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce.encode(), nonce.encode()):
        raise _refuse("nonce_mismatch")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _refuse("sub_invalid")
    auth_time = number("auth_time", required=max_age is not None)
    if max_age is not None:
        assert auth_time is not None
        # Core 3.1.2.1: with max_age the IdP must re-authenticate if the last login is older than that.
        if now - auth_time > max_age + skew or (requested_at is not None and auth_time < requested_at - skew):
            raise _refuse("auth_time_stale", "The identity provider did not ask you to sign in again.")
    return VerifiedIdToken(header=dict(decoded.header), claims=dict(claims))


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
        self._http = httpx.Client(timeout=config.timeout_seconds, follow_redirects=False)
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._lock = threading.Lock()
        self.keys = JwksCache(lambda: self._get_json(self.metadata().jwks_uri, "jwks"), monotonic=monotonic)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def display_name(self) -> str:
        return self.config.display_name

    def close(self) -> None:
        self._http.close()

    # ---------------------------------------------------------------- HTTP

    def _get_json(self, url: str, what: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        try:
            with self._http.stream("GET", url, headers={"Accept": "application/json", **(headers or {})}) as resp:
                body = b""
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise _refuse(f"{what}_too_large")
                status = resp.status_code
        except httpx.HTTPError:
            raise self._unreachable(what) from None
        if status != 200:
            if what == "userinfo":
                raise _refuse("userinfo_failed")
            raise self._unreachable(what)
        try:
            value = json.loads(body)
        except ValueError:
            raise _refuse(f"{what}_invalid") from None
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
            timeout=self.config.timeout_seconds,
            follow_redirects=False,
        )
        if self.config.client_auth == "private_key_jwt":
            client.register_client_auth_method(("private_key_jwt", self._private_key_jwt))
        return client

    def _private_key_jwt(
        self, client: Any, method: str, uri: str, headers: Any, body: str | bytes
    ) -> tuple[str, Any, bytes]:
        """RFC 7523 section 2.2 client authentication, signed with joserfc (authlib.jose is deprecated)."""
        assert self.config.private_key is not None
        pem = self.config.private_key.get_secret_value()
        key = ECKey.import_key(pem) if self.config.private_key_alg.startswith("ES") else RSAKey.import_key(pem)
        now = int(self._clock())
        header: dict[str, str] = {"alg": self.config.private_key_alg}
        if self.config.private_key_id:
            header["kid"] = self.config.private_key_id
        assertion = jwt.encode(
            header,
            {
                "iss": self.config.client_id,
                "sub": self.config.client_id,
                "aud": uri,
                "jti": secrets.token_urlsafe(24),
                "iat": now,
                "exp": now + 60,
            },
            key,
            algorithms=[self.config.private_key_alg],
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
            raise _refuse(
                "token_error", f"The identity provider did not accept the sign-in ({exc.error}). Start again."
            ) from None
        except httpx.HTTPError:
            raise self._unreachable("token") from None
        except ValueError:
            raise _refuse("token_response_invalid") from None
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise _refuse("id_token_missing")
        verified = verify_id_token(
            id_token,
            keys=self.keys,
            issuer=metadata.issuer,
            client_id=self.config.client_id,
            nonce=str(stored["nonce"]),
            algorithms=self.config.algorithms,
            now=self._clock(),
            skew=self.config.clock_skew_seconds,
            max_bytes=self.config.max_id_token_bytes,
            max_age=stored.get("max_age"),
            requested_at=stored.get("requested_at"),
        )
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
