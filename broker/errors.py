"""The broker's one error hierarchy.

Every failure a caller can see is a :class:`BrokerError` with a stable machine ``code`` (the RFC 6749 /
RFC 8693 code where a spec defines one), an HTTP ``status`` and a ``message`` that is safe to show and says
what to do. Domain code raises these; ``broker.web.errors`` renders them once, as JSON or as an HTML page.
Library exceptions are translated into these by the module that owns the library.
"""

from __future__ import annotations

from typing import ClassVar


class BrokerError(Exception):
    """Base class: ``code`` and ``status`` are class attributes, the message is per instance."""

    code: ClassVar[str] = "server_error"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "The broker could not complete the request."

    def __init__(
        self, message: str | None = None, *, reason: str | None = None, retry_after: int | None = None
    ) -> None:
        self.message = message or self.default_message
        # ``reason`` is the audit reason code (finer than ``code``), e.g. ``saml.audience_mismatch``.
        self.reason = reason or self.code
        self.retry_after = retry_after
        super().__init__(self.message)


class InvalidRequest(BrokerError):
    """RFC 6749 section 5.2 ``invalid_request``: malformed or missing parameters."""

    code = "invalid_request"
    status = 400
    default_message = "The request is missing a parameter or is malformed."


class InvalidGrant(BrokerError):
    """RFC 6749 section 5.2 ``invalid_grant``: a token, code or assertion failed verification."""

    code = "invalid_grant"
    status = 400
    default_message = "The presented credential could not be verified."


class InvalidTarget(BrokerError):
    """RFC 8693 section 2.2.2 ``invalid_target``: the requested audience or role is not available."""

    code = "invalid_target"
    status = 400
    default_message = "The requested target is not available to this subject."


class UnauthorizedClient(BrokerError):
    """RFC 6749 section 5.2 ``unauthorized_client``."""

    code = "unauthorized_client"
    status = 400
    default_message = "The client is not authorized for this request."


class InvalidClient(BrokerError):
    """RFC 6749 section 5.2 ``invalid_client``: client authentication failed (401 with a challenge)."""

    code = "invalid_client"
    status = 401
    default_message = "Client authentication failed."


class InvalidScope(BrokerError):
    """RFC 6749 section 5.2 ``invalid_scope``: more scope than the subject may have, or an unknown scope."""

    code = "invalid_scope"
    status = 400
    default_message = "The requested scope is not available to this subject."


class UnsupportedGrantType(BrokerError):
    """RFC 6749 section 5.2 ``unsupported_grant_type``."""

    code = "unsupported_grant_type"
    status = 400
    default_message = "This grant type is not supported by this broker."


class AuthenticationFailed(BrokerError):
    """A sign-in attempt failed (wrong password, bad assertion, bad ID token)."""

    code = "authentication_failed"
    status = 401
    default_message = "Sign-in failed. Check your details and try again."


class LoginRequired(BrokerError):
    """No valid broker session: the caller must sign in first."""

    code = "login_required"
    status = 401
    default_message = "You are not signed in, or your session has ended. Sign in again."


class AccessDenied(BrokerError):
    """Policy refused the request (default deny)."""

    code = "access_denied"
    status = 403
    default_message = "You are not allowed to use this role."


class MfaRequired(BrokerError):
    """The session's MFA evidence is below what the role requires."""

    code = "mfa_required"
    status = 403
    default_message = "This role needs a stronger sign-in (multi-factor authentication)."


class CsrfFailed(BrokerError):
    code = "csrf_failed"
    status = 403
    default_message = "The form expired or did not come from this site. Reload the page and try again."


class NotFound(BrokerError):
    code = "not_found"
    status = 404
    default_message = "There is nothing here."


class PayloadTooLarge(BrokerError):
    code = "payload_too_large"
    status = 413
    default_message = "The request is too large."


class RateLimited(BrokerError):
    code = "rate_limited"
    status = 429
    default_message = "Too many attempts. Wait a little and try again."

    def __init__(
        self, message: str | None = None, *, reason: str | None = None, retry_after: int | None = None
    ) -> None:
        # The wait is known (it is the Retry-After header): say it rather than "a little".
        if message is None and retry_after is not None:
            unit = "second" if retry_after == 1 else "seconds"
            message = f"Too many attempts. Try again in {retry_after} {unit}."
        super().__init__(message, reason=reason, retry_after=retry_after)


TOTP_REPLAY_MESSAGE = (
    "This authenticator code was already used. Wait for the next code (at most 30 seconds) and enter it."
)


class ReplayDetected(InvalidGrant):
    """A one-time value (assertion ID, ``jti``, nonce, code, TOTP code) was presented a second time."""

    default_message = "This sign-in message was already used. Start the sign-in again."

    def __init__(self, message: str | None = None, *, reason: str = "replay") -> None:
        super().__init__(message, reason=reason)


class UpstreamError(BrokerError):
    """AWS refused the request for a reason the caller cannot fix by retrying."""

    code = "upstream_refused"
    status = 502
    default_message = "AWS refused to issue credentials for this role. Ask an administrator to check the role."


class PolicyTooLarge(BrokerError):
    code = "packed_policy_too_large"
    status = 400
    default_message = "The session policy and tags are too large for AWS. Ask an administrator to shorten them."


class ServiceUnavailable(BrokerError):
    """A dependency (database, audit trail, STS, IdP) is unavailable: fail closed."""

    code = "temporarily_unavailable"
    status = 503
    default_message = "The broker cannot issue credentials right now. Try again in a minute."
    # RFC 9110 section 10.2.3: every 503 says when to retry. Where the failing dependency gives no better
    # figure (a database or audit outage), the "minute" the message promises.
    default_retry_after: ClassVar[int] = 60

    def __init__(
        self, message: str | None = None, *, reason: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message, reason=reason, retry_after=retry_after or self.default_retry_after)


class AuditUnavailable(ServiceUnavailable):
    """The audit write did not commit, so nothing may leave the broker (fail closed)."""

    default_message = "The audit trail is unavailable, so no credentials were issued. Try again in a minute."


# ---------------------------------------------------------------- device flow and bearer tokens


class AuthorizationPending(BrokerError):
    """RFC 8628 section 3.5 ``authorization_pending``: the user has not confirmed the code yet (keep polling)."""

    code = "authorization_pending"
    status = 400
    default_message = "The sign-in is waiting for you to confirm the code in your browser."


class SlowDown(BrokerError):
    """RFC 8628 section 3.5 ``slow_down``: polled faster than the interval; the interval grows by 5 seconds."""

    code = "slow_down"
    status = 400
    default_message = "Polling too fast: wait 5 seconds longer between requests."


class ExpiredToken(BrokerError):
    """RFC 8628 section 3.5 ``expired_token``: the device code expired; start a new sign-in."""

    code = "expired_token"
    status = 400
    default_message = "The sign-in code expired. Run `broker login` again."


class AuthorizationDeclined(BrokerError):
    """RFC 8628 section 3.5 / RFC 6749 section 4.1.2.1 ``access_denied``: the user refused the request."""

    code = "access_denied"
    status = 400
    default_message = "The sign-in was denied in the browser."


class UnsupportedResponseType(BrokerError):
    """RFC 6749 section 4.1.2.1 ``unsupported_response_type``: only ``code`` is offered."""

    code = "unsupported_response_type"
    status = 400
    default_message = "Only response_type=code is supported."


class InvalidToken(BrokerError):
    """RFC 6750 section 3.1 ``invalid_token``: the bearer token is missing, expired, revoked or malformed."""

    code = "invalid_token"
    status = 401
    default_message = "The access token is not valid. Run `broker login` to sign in again."


# ---------------------------------------------------------------- SCIM 2.0 provisioning


class ScimError(BrokerError):
    """RFC 7644 section 3.12: a SCIM error; ``scim_type`` is the RFC's ``scimType`` where it defines one.

    Rendered (``broker.web.errors``) as a SCIM Error message for the ``/scim/v2`` endpoints. One subclass per
    HTTP status the protocol answers with, so ``status`` stays a class attribute like every broker error.
    """

    code = "scim_invalid"
    status = 400
    default_message = "The SCIM request is not valid."

    def __init__(self, message: str | None = None, *, scim_type: str | None = None, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.scim_type = scim_type


class ScimUnauthorized(ScimError):
    code = "scim_unauthorized"
    status = 401
    default_message = "Send the provisioning client's bearer token (Authorization: Bearer ...)."


class ScimForbidden(ScimError):
    code = "scim_forbidden"
    status = 403
    default_message = "This provisioning client may not do that."


class ScimNotFound(ScimError):
    code = "scim_not_found"
    status = 404
    default_message = "No such resource."


class ScimMethodNotAllowed(ScimError):
    code = "scim_method_not_allowed"
    status = 405
    default_message = "This SCIM endpoint does not accept that method."


class ScimConflict(ScimError):
    code = "scim_conflict"
    status = 409
    default_message = "The resource conflicts with one that exists."


class ScimPreconditionFailed(ScimError):
    code = "scim_precondition_failed"
    status = 412
    default_message = "The resource changed since it was read (If-Match)."


class ScimPayloadTooLarge(ScimError):
    code = "scim_payload_too_large"
    status = 413
    default_message = "The request is too large."


class ScimNotImplemented(ScimError):
    code = "scim_not_implemented"
    status = 501
    default_message = "This SCIM feature is not supported by the broker."


class ConfigError(Exception):
    """Configuration problems, each with the YAML path it concerns. Not an HTTP error: raised at start-up."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {path}: {msg}" for path, msg in problems)
        super().__init__(f"{len(problems)} configuration problem(s):\n{lines}")


class AnchorUnavailable(ServiceUnavailable):
    """A digest sink (directory or S3 bucket) could not be written or read."""

    code = "anchor_unavailable"
    default_message = "The audit digest store could not be reached; check its path, bucket and credentials."


class SchemaMismatch(BrokerError):
    """``broker db`` cannot move the schema as asked: an unknown target, a database newer than this release, or a
    migration that cannot be undone. The message names the revisions and the command that fixes it."""

    code = "schema_mismatch"
    status = 409
    default_message = "The database schema cannot be changed as asked."


class KeysUnusable(ServiceUnavailable):
    """Stored values do not fit the configured keys (``broker.keyring``), or a re-key was refused: an operator
    must act (list the missing key again, or investigate the audit trail)."""

    code = "keys_unusable"
