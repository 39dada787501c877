"""Certificate identity stores (``type: x509``): devices and workloads that hold a key and a certificate.

Only :class:`X509Connector` builds a :class:`VerifiedCertificate`, after every check below passed:

1. size, before parsing: at most ``max_chain_certificates`` certificates of at most ``MAX_CERTIFICATE_BYTES``;
2. path validation by ``cryptography``'s RFC 5280 verifier (``x509.verification``, the CA/Browser Forum
   profile): a path from the leaf to a configured trust anchor through configured intermediates (and the
   presented ones if ``client_intermediates``); the validity window of every certificate; basicConstraints
   (a CA certificate is never accepted as a leaf; pathLenConstraint); nameConstraints; signature algorithms
   and key sizes; the chain depth;
3. what the library leaves optional: the leaf must carry extendedKeyUsage with ``clientAuth`` (the library
   accepts a leaf with no EKU at all), and a keyUsage, if present, must allow ``digitalSignature``;
4. revocation (RFC 5280 section 6.3): the leaf, and each intermediate whose issuer has a configured CRL,
   looked up in that CRL (``broker.connectors.crl``); no usable CRL is refused when ``crl_failure: deny``
   (for an intermediate: when some listed CRL could not be used, since it might have been its issuer's);
5. mapping: the first rule whose patterns all match turns certificate fields into an
   :class:`~broker.identity.Identity` (its ``store`` is the store's name, so grant rules bind to it).

Proof that the caller holds the private key is the caller's job (the RFC 7523 grant checks the assertion's
signature; mutual TLS proves it in the handshake). Every refusal is an ``invalid_grant`` (RFC 7523 section
3.1) whose audit reason names the failed check (``x509.*``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from broker.connectors.crl import CrlCache, CrlStatus
from broker.errors import InvalidGrant, ServiceUnavailable
from broker.http import HttpClient
from broker.identity import Identity
from broker.settings import X509MappingRule, X509StoreConfig

# A device certificate is 0.5 to 2 kB of DER; RSA-4096 with many SANs stays under 4 kB.
MAX_CERTIFICATE_BYTES = 8192
MAX_VALUE_CHARS = 1024
_TEMPLATE = re.compile(r"\{([^{}]*)\}")
# Subject attribute names as mapping rules write them; the rest by their RFC 4514 name or dotted OID.
_ATTRIBUTE_NAMES = {NameOID.SERIAL_NUMBER: "serialNumber", NameOID.EMAIL_ADDRESS: "emailAddress"}


def refuse(reason: str, message: str) -> InvalidGrant:
    return InvalidGrant(f"The certificate is not acceptable: {message}.", reason=f"x509.{reason}")


@dataclass(frozen=True)
class CertificateFacts:
    """What the audit trail records about a presented certificate, verified or not."""

    fingerprint: str
    issuer: str
    serial: str
    subject: str

    @classmethod
    def of(cls, certificate: x509.Certificate) -> CertificateFacts:
        return cls(
            fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
            issuer=certificate.issuer.rfc4514_string()[:MAX_VALUE_CHARS],
            serial=format(certificate.serial_number, "x"),
            subject=certificate.subject.rfc4514_string()[:MAX_VALUE_CHARS],
        )

    def to_json(self) -> dict[str, str]:
        return {"fingerprint": self.fingerprint, "issuer": self.issuer, "serial": self.serial, "subject": self.subject}


@dataclass(frozen=True)
class VerifiedCertificate:
    """A certificate whose path, extensions, revocation and mapping passed. Only the connector makes one."""

    identity: Identity
    facts: CertificateFacts
    leaf: x509.Certificate = field(repr=False)
    chain: tuple[x509.Certificate, ...] = field(repr=False)
    revocation: str

    def audit(self) -> dict[str, str]:
        return {**self.facts.to_json(), "store": self.identity.store, "revocation": self.revocation}


def parse_chain(ders: Sequence[bytes], *, max_certificates: int) -> list[x509.Certificate]:
    """Leaf first. Size limits are checked before anything is parsed."""
    if not ders:
        raise refuse("no_certificate", "no certificate was presented")
    if len(ders) > max_certificates:
        raise refuse("chain_too_large", f"the chain holds more than {max_certificates} certificates")
    if any(len(der) > MAX_CERTIFICATE_BYTES for der in ders):
        raise refuse("chain_too_large", f"a certificate is larger than {MAX_CERTIFICATE_BYTES} bytes")
    try:
        return [x509.load_der_x509_certificate(der) for der in ders]
    except ValueError:
        raise refuse("malformed", "a certificate is not valid DER") from None


def leaf_facts(ders: Sequence[bytes]) -> CertificateFacts | None:
    """The audit facts of the presented leaf, when it is itself within limits and parses (the rest may not)."""
    if not ders or len(ders[0]) > MAX_CERTIFICATE_BYTES:
        return None
    try:
        return CertificateFacts.of(x509.load_der_x509_certificate(ders[0]))
    except ValueError:
        return None


def pem_to_der(pem: bytes) -> list[bytes]:
    """PEM certificates (a chain, leaf first) as DER, for proxies and TLS stacks that hand over PEM."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise refuse("malformed", "the forwarded certificate is not PEM") from None
    return [c.public_bytes(serialization.Encoding.DER) for c in certificates]


def certificate_fields(certificate: x509.Certificate) -> dict[str, tuple[str, ...]]:
    """The fields mapping rules match and render (settings: ``X509MappingRule``)."""
    fields: dict[str, list[str]] = {
        "subject": [certificate.subject.rfc4514_string()],
        "issuer": [certificate.issuer.rfc4514_string()],
        "serial": [format(certificate.serial_number, "x")],
        "fingerprint": [certificate.fingerprint(hashes.SHA256()).hex()],
    }
    for prefix, name in (("subject", certificate.subject), ("issuer", certificate.issuer)):
        for attribute in name:
            if isinstance(attribute.value, str):
                label = _ATTRIBUTE_NAMES.get(attribute.oid) or attribute.rfc4514_attribute_name
                fields.setdefault(f"{prefix}.{label}", []).append(attribute.value)
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        fields["san.uri"] = list(san.get_values_for_type(x509.UniformResourceIdentifier))
        fields["san.dns"] = list(san.get_values_for_type(x509.DNSName))
        fields["san.email"] = list(san.get_values_for_type(x509.RFC822Name))
        fields["san.ip"] = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return {name: tuple(v[:MAX_VALUE_CHARS] for v in values) for name, values in fields.items() if values}


def _client_auth(policy: Policy, certificate: x509.Certificate, eku: x509.ExtendedKeyUsage) -> None:
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise ValueError("extendedKeyUsage does not include clientAuth")


def _digital_signature(policy: Policy, certificate: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    if usage is not None and not usage.digital_signature:
        raise ValueError("keyUsage does not allow digitalSignature")


def _load_pems(paths: Sequence[Path]) -> list[x509.Certificate]:
    return [c for path in paths for c in x509.load_pem_x509_certificates(path.read_bytes())]


class X509Connector:
    """One ``type: x509`` identity store; thread-safe, one per process."""

    kind = "x509"

    def __init__(self, config: X509StoreConfig, *, http: HttpClient) -> None:
        self.config = config
        self.anchors = _load_pems(config.trust_anchors)
        self.intermediates = _load_pems(config.intermediates)
        self._store = Store(self.anchors)
        self._ee_policy = (
            ExtensionPolicy.webpki_defaults_ee()
            .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _client_auth)
            .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _digital_signature)
        )
        self._ca_policy = ExtensionPolicy.webpki_defaults_ca()
        self.crls = CrlCache(
            config.crl_urls,
            http=http,
            max_age_seconds=config.crl_max_age_seconds,
            max_bytes=config.crl_max_bytes,
            timeout_seconds=config.crl_timeout_seconds,
        )

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def display_name(self) -> str:
        return self.config.display_name

    def verify(self, chain: Sequence[x509.Certificate], now: datetime) -> VerifiedCertificate:
        """Validate ``chain`` (leaf first, then what the device presented) and map it to an identity."""
        leaf, presented = chain[0], list(chain[1:])
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(now)
            .max_chain_depth(self.config.max_chain_certificates)
            .extension_policies(ca_policy=self._ca_policy, ee_policy=self._ee_policy)
            .build_client_verifier()
        )
        intermediates = self.intermediates + (presented if self.config.client_intermediates else [])
        try:
            verified = verifier.verify(leaf, intermediates)
        except VerificationError as exc:
            raise _path_error(str(exc), leaf, now) from None
        path = tuple(verified.chain)
        revocation = self._revocation(path, now)
        identity = self._map(leaf)
        return VerifiedCertificate(identity, CertificateFacts.of(leaf), leaf, path, revocation)

    # ------------------------------------------------------------ revocation

    def _revocation(self, path: Sequence[x509.Certificate], now: datetime) -> str:
        if not self.crls.urls:
            return "not_configured"
        unknown: list[str] = []
        for depth, (certificate, issuer) in enumerate(itertools.pairwise(path)):
            status: CrlStatus = self.crls.status(certificate, issuer, now)
            if status.state == "revoked":
                what = "certificate" if depth == 0 else "an intermediate CA of its chain"
                raise refuse("revoked", f"the {what} is revoked ({status.detail})")
            # The leaf must be covered; an intermediate when its issuer's CRL is listed, or may be (a listed
            # CRL that could not be used might be that issuer's).
            if status.state == "unknown" and (depth == 0 or status.failures):
                unknown.append(status.detail)
        if not unknown:
            return "good"
        if self.config.crl_failure == "allow":
            return "unknown (crl_failure: allow): " + unknown[0][:200]
        stale = "stale" in unknown[0]
        raise ServiceUnavailable(
            "The certificate's revocation status cannot be checked right now (its CA's revocation list "
            f"{'is out of date' if stale else 'could not be fetched'}). Try again later or tell the CA's operators.",
            reason="x509.crl_stale" if stale else "x509.crl_unavailable",
            retry_after=30,
        )

    # ------------------------------------------------------------ mapping

    def _map(self, leaf: x509.Certificate) -> Identity:
        fields = certificate_fields(leaf)
        for rule in self.config.rules:
            matched = _match(rule, fields)
            if matched is not None:
                return self._identity(rule, matched, leaf)
        raise refuse("no_mapping", "no mapping rule of this store matches it")

    def _identity(self, rule: X509MappingRule, fields: Mapping[str, str], leaf: x509.Certificate) -> Identity:
        def render(template: str) -> str:
            def one(match: re.Match[str]) -> str:
                value = fields.get(match.group(1))
                if value is None:
                    raise refuse("mapping_incomplete", f"it has no {match.group(1)} for the matching rule")
                return value

            return _TEMPLATE.sub(one, template)[:MAX_VALUE_CHARS]

        subject = render(rule.subject)
        if not subject:
            raise refuse("mapping_incomplete", "the matching rule gives it an empty subject")
        attributes = {name: render(template) for name, template in rule.attributes.items()}
        attributes.update(
            {
                "x509.serial": fields["serial"],
                "x509.fingerprint": fields["fingerprint"],
                "x509.issuer": fields["issuer"],
            }
        )
        return Identity(
            subject=subject,
            issuer=leaf.issuer.rfc4514_string()[:MAX_VALUE_CHARS],
            store=self.config.name,
            username=render(rule.username) if rule.username else subject,
            email=render(rule.email) if rule.email else None,
            groups=frozenset(rule.groups),
            attributes=attributes,
        )


def _match(rule: X509MappingRule, fields: Mapping[str, tuple[str, ...]]) -> dict[str, str] | None:
    """The field values a rule sees (for multi-valued fields, the one that matched), or None."""
    chosen = {name: values[0] for name, values in fields.items()}
    for name, pattern in rule.match.items():
        hit = next((v for v in fields.get(name, ()) if fnmatch.fnmatchcase(v, pattern)), None)
        if hit is None:
            return None
        chosen[name] = hit
    return chosen


def _path_error(message: str, leaf: x509.Certificate, now: datetime) -> InvalidGrant:
    """cryptography's verification message, as a stable audit reason and a message saying what to do."""
    text = message.lower()
    if leaf.not_valid_after_utc < now:
        return refuse("expired", "it has expired; the device needs a renewed certificate")
    if leaf.not_valid_before_utc > now:
        return refuse("not_yet_valid", "it is not valid yet (check the device's clock)")
    if "basicconstraints.ca must not be asserted" in text or _is_ca(leaf):
        return refuse("ca_as_leaf", "a CA certificate cannot sign in as a device")
    if "2.5.29.37" in text or "extendedkeyusage" in text:
        return refuse("eku", "it is not issued for client authentication (extendedKeyUsage clientAuth)")
    if "name constraint" in text:
        return refuse("name_constraints", "a CA's name constraints do not allow its names")
    if "path length" in text:
        return refuse("path_length", "its chain is longer than a CA's pathLenConstraint allows")
    if "not valid at validation time" in text:
        return refuse("chain_validity", "a CA certificate of its chain is outside its validity period")
    if "2.5.29.15" in text or "keyusage" in text:
        return refuse("key_usage", "its keyUsage does not allow signatures")
    if "candidates exhausted" in text:
        return refuse("untrusted_chain", "it does not chain to a CA this store trusts")
    return refuse("path_invalid", f"path validation failed ({message[:200]})")


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def tcp_peer_allowed(peer: str | None, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether the TCP peer address is inside one of ``networks``."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in networks)


def fingerprint_of_der(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()
