"""Time-based one-time passwords (RFC 6238) with pyotp, and their enrolment QR code with segno.

The broker's one TOTP matcher: enrolled second factors (``mfa.service``), break-glass accounts
(``connectors.local``) and the dev-mode demo account all check and make codes here.

Codes are 6 digits over 30-second steps with HMAC-SHA1, the parameters every authenticator app supports
(RFC 6238 section 4; Google Authenticator's key-URI format). One step either side is accepted for clock
drift (RFC 6238 section 5.2); the accepted step is returned so the caller can refuse its reuse.
"""

from __future__ import annotations

import base64
import io

import pyotp
import segno

STEP_SECONDS = 30
DRIFT_STEPS = 1
DIGITS = 6


def new_secret() -> str:
    """160 random bits in base32, the length RFC 4226 section 4 recommends for the HMAC key."""
    return pyotp.random_base32(length=32)


def provisioning_uri(secret: str, *, account: str, issuer: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(name=account, issuer_name=issuer)


def qr_data_uri(uri: str) -> str:
    """The key URI as an SVG QR code in a ``data:`` URI (the CSP allows ``img-src data:``; no script)."""
    buffer = io.BytesIO()
    segno.make(uri, error="m").save(buffer, kind="svg", scale=5, border=2, xmldecl=False, svgns=True)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()


def current_code(secret: str, *, now: float) -> str:
    """The code an authenticator app shows at ``now`` (dev mode prints it for the demo account)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).at(now)


def matching_step(secret: str, code: str, *, now: float) -> int | None:
    """The time step ``code`` belongs to, within one step of ``now``; None if it matches none."""
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == DIGITS):
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    for offset in (0, -DRIFT_STEPS, DRIFT_STEPS):
        at = now + offset * STEP_SECONDS
        if totp.verify(code, for_time=at, valid_window=0):
            return int(at // STEP_SECONDS)
    return None
