"""WebAuthn Level 2 ceremonies (W3C Web Authentication, sections 7.1 and 7.2), the only user of ``webauthn``.

The broker is the relying party: its RP ID and allowed origins come from configuration, never from a request.
Registration asks for no attestation (the broker trusts the user's own sign-in to bind a key, not a vendor
certificate); authentication checks challenge, origin, RP ID hash, user presence, user verification when
asked, the signature, and that the signature counter moved forward (section 6.1.1: a counter that does not
advance suggests a cloned authenticator).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import webauthn as lib
from webauthn.helpers import bytes_to_base64url, parse_client_data_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.parse_authentication_credential_json import parse_authentication_credential_json
from webauthn.helpers.parse_registration_credential_json import parse_registration_credential_json
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from broker.errors import AuthenticationFailed

# The browser shows its prompt this long (a hint; W3C WebAuthn section 5.4 `timeout`). The broker's own
# limit on a ceremony is CEREMONY_TTL_SECONDS, a little longer.
TIMEOUT_MS = 120_000
CEREMONY_TTL_SECONDS = 180
# Credential ids are at most 1023 bytes (W3C WebAuthn section 4, "Credential ID"); JSON bodies are small.
MAX_CREDENTIAL_JSON = 64 * 1024


@dataclass(frozen=True)
class RelyingParty:
    id: str
    name: str
    origins: tuple[str, ...]


@dataclass(frozen=True)
class Ceremony:
    """Options for the browser (JSON) and the challenge the broker keeps server-side."""

    options_json: str
    challenge: str


@dataclass(frozen=True)
class NewCredential:
    credential_id: str
    public_key: str
    sign_count: int
    user_verified: bool


@dataclass(frozen=True)
class Assertion:
    credential_id: str
    new_sign_count: int
    user_verified: bool


def _uv(required: bool) -> UserVerificationRequirement:
    return UserVerificationRequirement.REQUIRED if required else UserVerificationRequirement.PREFERRED


def _reason(exc: Exception) -> str:
    """A stable audit reason for the library's message (it has one exception class per ceremony)."""
    text = str(exc).lower()
    for needle, reason in (
        ("origin", "webauthn.origin_mismatch"),
        ("challenge", "webauthn.challenge_mismatch"),
        ("rp id", "webauthn.rp_id_mismatch"),
        ("sign count", "webauthn.sign_count_not_increased"),
        ("user verification", "webauthn.user_not_verified"),
        ("not present", "webauthn.user_not_present"),
        ("signature", "webauthn.signature_invalid"),
    ):
        if needle in text:
            return reason
    return "webauthn.response_invalid"


def _refuse(reason: str) -> AuthenticationFailed:
    messages = {
        "webauthn.origin_mismatch": "The security key answered for another website. Use this broker's own page.",
        "webauthn.user_not_verified": "Your security key did not verify you (PIN or biometric). Try again.",
    }
    return AuthenticationFailed(
        messages.get(reason, "The security key's answer could not be verified. Try again."), reason=reason
    )


def _parse(payload: str, parser: Any) -> Any:
    if len(payload) > MAX_CREDENTIAL_JSON:
        raise _refuse("webauthn.response_too_large")
    try:
        return parser(payload)
    except (WebAuthnException, ValueError, TypeError, KeyError):
        raise _refuse("webauthn.response_malformed") from None


def _check_origin(rp: RelyingParty, client_data_json: bytes) -> None:
    """Refuse an answer made on another origin before anything else (phishing: W3C WebAuthn section 13.4.9)."""
    try:
        origin = parse_client_data_json(client_data_json).origin
    except (WebAuthnException, ValueError, TypeError, KeyError):
        raise _refuse("webauthn.response_malformed") from None
    if origin not in rp.origins:
        raise _refuse("webauthn.origin_mismatch")


def registration(
    rp: RelyingParty, *, user_handle: bytes, user_name: str, exclude: Sequence[str], require_uv: bool
) -> Ceremony:
    options = lib.generate_registration_options(
        rp_id=rp.id,
        rp_name=rp.name,
        user_id=user_handle,
        user_name=user_name,
        timeout=TIMEOUT_MS,
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.DISCOURAGED, user_verification=_uv(require_uv)
        ),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=lib.base64url_to_bytes(c)) for c in exclude],
    )
    return Ceremony(lib.options_to_json(options), bytes_to_base64url(options.challenge))


def verify_registration(rp: RelyingParty, payload: str, *, challenge: str, require_uv: bool) -> NewCredential:
    credential = _parse(payload, parse_registration_credential_json)
    _check_origin(rp, credential.response.client_data_json)
    try:
        verified = lib.verify_registration_response(
            credential=credential,
            expected_challenge=lib.base64url_to_bytes(challenge),
            expected_rp_id=rp.id,
            expected_origin=list(rp.origins),
            require_user_verification=require_uv,
        )
    except WebAuthnException as exc:
        raise _refuse(_reason(exc)) from None
    return NewCredential(
        credential_id=bytes_to_base64url(verified.credential_id),
        public_key=bytes_to_base64url(verified.credential_public_key),
        sign_count=verified.sign_count,
        user_verified=verified.user_verified,
    )


def authentication(rp: RelyingParty, *, allow: Sequence[str], require_uv: bool) -> Ceremony:
    options = lib.generate_authentication_options(
        rp_id=rp.id,
        timeout=TIMEOUT_MS,
        allow_credentials=[PublicKeyCredentialDescriptor(id=lib.base64url_to_bytes(c)) for c in allow],
        user_verification=_uv(require_uv),
    )
    return Ceremony(lib.options_to_json(options), bytes_to_base64url(options.challenge))


def credential_id_of(payload: str) -> str:
    """The credential id an assertion claims (to look up its public key); verified afterwards."""
    credential = _parse(payload, parse_authentication_credential_json)
    return bytes_to_base64url(credential.raw_id)


def verify_authentication(
    rp: RelyingParty, payload: str, *, challenge: str, public_key: str, sign_count: int, require_uv: bool
) -> Assertion:
    credential = _parse(payload, parse_authentication_credential_json)
    _check_origin(rp, credential.response.client_data_json)
    try:
        verified = lib.verify_authentication_response(
            credential=credential,
            expected_challenge=lib.base64url_to_bytes(challenge),
            expected_rp_id=rp.id,
            expected_origin=list(rp.origins),
            credential_public_key=lib.base64url_to_bytes(public_key),
            credential_current_sign_count=sign_count,
            require_user_verification=require_uv,
        )
    except WebAuthnException as exc:
        raise _refuse(_reason(exc)) from None
    return Assertion(bytes_to_base64url(verified.credential_id), verified.new_sign_count, verified.user_verified)


def options_dict(ceremony: Ceremony) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(ceremony.options_json)
    return result
