"""Certificate revocation lists (RFC 5280 section 5), fetched from configured URLs and cached.

Each configured URL has one cache slot, so the cache is bounded by the number of URLs times
``crl_max_bytes``. A slot is used until the earlier of ``crl_max_age_seconds`` after the fetch and the CRL's
own ``nextUpdate``; then it is fetched again. A CRL counts only if its signature verifies with the key of the
CA that issued the certificate being checked (section 6.3.3 (f)), so a CRL served by someone else, or for
another CA, is ignored rather than trusted.

The answer is one of: not revoked, revoked, or unknown (no usable CRL: it could not be fetched, is too
large, does not parse, or is past its ``nextUpdate``). What "unknown" means is the store's choice
(``crl_failure``), made by the connector.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from broker.http import HttpClient, UpstreamTooLarge, UpstreamUnavailable


@dataclass(frozen=True)
class CrlStatus:
    """The revocation status of one certificate: ``good``, ``revoked`` or ``unknown`` (with why)."""

    state: str
    detail: str = ""
    # Whether some configured CRL could not be used: an "unknown" then may hide this issuer's CRL.
    failures: bool = False


# After a failed fetch the URL is tried again at most this often (a dead CRL server is not hammered, and a
# recovered one is noticed quickly).
RETRY_SECONDS = 5.0


@dataclass
class _Slot:
    crl: x509.CertificateRevocationList | None = None
    fetched_at: float | None = None
    attempted_at: float | None = None
    error: str = ""


class CrlCache:
    """The CRLs of one identity store; thread-safe, one per process."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        http: HttpClient,
        max_age_seconds: float,
        max_bytes: int,
        timeout_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.urls = tuple(urls)
        self._http = http
        self._max_age = max_age_seconds
        self._max_bytes = max_bytes
        self._timeout = timeout_seconds
        self._monotonic = monotonic
        self._slots = {url: _Slot() for url in self.urls}
        self._locks = {url: threading.Lock() for url in self.urls}
        self.fetches = 0

    def status(self, certificate: x509.Certificate, issuer: x509.Certificate, now: datetime) -> CrlStatus:
        """Whether ``certificate`` (issued by ``issuer``) is on a current CRL of that issuer."""
        usable = [crl for crl in self._current(now) if _issued_by(crl, issuer)]
        if not usable:
            problems = sorted({s.error for s in self._slots.values() if s.error})
            return CrlStatus("unknown", "; ".join(problems) or "no CRL of this issuer is configured", bool(problems))
        fresh = [crl for crl in usable if crl.next_update_utc is not None and crl.next_update_utc > now]
        if not fresh:
            return CrlStatus("unknown", "the issuer's CRL is past its nextUpdate (stale)", True)
        for crl in fresh:
            entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
            if entry is not None:
                return CrlStatus("revoked", f"revoked at {entry.revocation_date_utc.isoformat()}")
        return CrlStatus("good")

    def _current(self, now: datetime) -> list[x509.CertificateRevocationList]:
        crls = []
        for url in self.urls:
            slot = self._slots[url]
            if self._expired(slot, now):
                with self._locks[url]:
                    slot = self._slots[url]
                    if self._expired(slot, now):
                        slot = self._fetch(url)
                        self._slots[url] = slot
            if slot.crl is not None:
                crls.append(slot.crl)
        return crls

    def _expired(self, slot: _Slot, now: datetime) -> bool:
        clock = self._monotonic()
        if slot.attempted_at is not None and clock - slot.attempted_at < RETRY_SECONDS:
            return False
        if slot.crl is None or slot.fetched_at is None or clock - slot.fetched_at >= self._max_age:
            return True
        next_update = slot.crl.next_update_utc
        return next_update is not None and next_update <= now

    def _fetch(self, url: str) -> _Slot:
        self.fetches += 1
        attempted = self._monotonic()
        try:
            response = self._http.get(url, max_bytes=self._max_bytes, timeout=self._timeout)
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            body = response.body
            crl = x509.load_pem_x509_crl(body) if body.lstrip().startswith(b"-----") else x509.load_der_x509_crl(body)
        except UpstreamTooLarge:
            return _Slot(None, None, attempted, f"{url}: larger than crl_max_bytes")
        except UpstreamUnavailable as exc:
            return _Slot(None, None, attempted, f"{url}: {exc.reason}")
        except ValueError as exc:
            # No usable copy any more: an older CRL is past the age the store allows (fail closed).
            return _Slot(None, None, attempted, f"{url}: {type(exc).__name__}: {str(exc)[:120]}")
        return _Slot(crl, attempted, attempted, "")


def _issued_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    if crl.issuer != issuer.subject:
        return False
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (InvalidSignature, UnsupportedAlgorithm, TypeError, ValueError):
        return False
