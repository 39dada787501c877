"""Second factors the broker holds itself: TOTP (RFC 6238), WebAuthn, recovery codes, and their lockout.

``service.MfaService`` is the use-case layer (enrol, verify, step up, reset); ``totp``, ``webauthn`` and
``crypto`` each own one library (pyotp and segno, webauthn, cryptography's AES-GCM).
"""
