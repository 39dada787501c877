"""The MFA use cases: enrol and remove factors, verify them as a step-up, lock out guessing, reset.

A factor completed here is added to the session's evidence (``Identity.mfa``, with its time) and the session
row is updated, so every later issuance (console, CLI page, API) sees it through the same pure policy. Every
attempt runs in one transaction that row-locks the principal's and the client address's failure counters:
a lockout is checked before the code, and the outcome, the counters and exactly one audit event commit
together.

The use cases live by seam: :mod:`broker.mfa.enrolment`, :mod:`broker.mfa.verification` and
:mod:`broker.mfa.admin`, on the shared core in :mod:`broker.mfa.attempts`; the values they hand back are in
:mod:`broker.mfa.views`.
"""

from __future__ import annotations

from broker.mfa.admin import AdminReset
from broker.mfa.enrolment import Enrolment
from broker.mfa.verification import Verification
from broker.mfa.views import (
    AMR,
    BROKER_METHODS,
    RECOVERY,
    RESET_TTL_SECONDS,
    TOTP,
    WEBAUTHN,
    FactorView,
    Holder,
    Overview,
    PendingReset,
    TotpEnrolment,
    Verified,
)

__all__ = [
    "AMR",
    "BROKER_METHODS",
    "RECOVERY",
    "RESET_TTL_SECONDS",
    "TOTP",
    "WEBAUTHN",
    "FactorView",
    "Holder",
    "MfaService",
    "Overview",
    "PendingReset",
    "TotpEnrolment",
    "Verified",
]


class MfaService(Enrolment, Verification, AdminReset):
    """Every MFA use case over one set of dependencies (database, keys, audit trail, clock)."""
