"""A real certificate hierarchy made with ``cryptography``: root, intermediate, device leaves, CRLs.

The shapes follow what a company device CA issues (RFC 5280, the CA/Browser Forum profile the broker's
verifier applies): CA certificates with basicConstraints, keyCertSign and key identifiers; device leaves
with clientAuth EKU and a SPIFFE URI SAN. Each hostile shape is a keyword away (``eku=None``, ``ca=True``,
a time window in the past, a name outside the intermediate's name constraints).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey
UTC = dt.UTC


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


def name(cn: str, org: str = "Corp") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Issued:
    certificate: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def serial_hex(self) -> str:
        return format(self.certificate.serial_number, "x")

    @property
    def fingerprint(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex()

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        cert, key = folder / f"{stem}.pem", folder / f"{stem}.key"
        cert.write_bytes(self.pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return cert, key


def _key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(
    cn: str,
    *,
    issuer: Issued | None = None,
    path_length: int | None = None,
    permitted_dns: list[str] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key: PrivateKey | None = None,
) -> Issued:
    """A root (``issuer`` None) or an intermediate CA."""
    key = key or _key()
    start = not_before or now() - dt.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(issuer.certificate.subject if issuer else name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or now() + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    if permitted_dns is not None:
        builder = builder.add_extension(
            x509.NameConstraints(permitted_subtrees=[x509.DNSName(d) for d in permitted_dns], excluded_subtrees=None),
            critical=True,
        )
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def make_leaf(
    issuer: Issued,
    cn: str,
    *,
    uri: str | None = None,
    dns: list[str] | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
    no_eku: bool = False,
    ca: bool = False,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key: PrivateKey | None = None,
    org: str = "Corp",
    ips: list[str] | None = None,
) -> Issued:
    key = key or _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(cn, org))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now() - dt.timedelta(hours=1))
        .not_valid_after(not_after or now() + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns or []]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips or []]
    if uri:
        names.append(x509.UniformResourceIdentifier(uri))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if not no_eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku or [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    return Issued(builder.sign(issuer.key, hashes.SHA256()), key)


def make_crl(
    issuer: Issued,
    revoked: list[Issued] = (),  # type: ignore[assignment]
    *,
    next_update: dt.datetime | None = None,
    last_update: dt.datetime | None = None,
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(last_update or now() - dt.timedelta(minutes=5))
        .next_update(next_update or now() + dt.timedelta(days=1))
    )
    for item in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(item.certificate.serial_number)
            .revocation_date(now() - dt.timedelta(minutes=1))
            .build()
        )
    return builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@dataclass
class Hierarchy:
    """Root -> intermediate (name-constrained to ``edge.corp.example``) -> device leaves."""

    root: Issued = field(default_factory=lambda: make_ca("Corp Device Root CA", path_length=1))
    intermediate: Issued = field(init=False)

    def __post_init__(self) -> None:
        self.intermediate = make_ca(
            "Corp Edge Issuing CA", issuer=self.root, path_length=0, permitted_dns=["edge.corp.example"]
        )

    def device(self, cn: str = "gw-17", **kwargs: object) -> Issued:
        kwargs.setdefault("uri", f"spiffe://corp.example/edge/{cn}")
        kwargs.setdefault("dns", [f"{cn}.edge.corp.example"])
        return make_leaf(self.intermediate, cn, **kwargs)  # type: ignore[arg-type]

    def write(self, folder: Path) -> tuple[Path, Path]:
        """The trust anchor and intermediate bundles, as the broker's config names them."""
        folder.mkdir(parents=True, exist_ok=True)
        anchors, intermediates = folder / "anchors.pem", folder / "intermediates.pem"
        anchors.write_bytes(self.root.pem)
        intermediates.write_bytes(self.intermediate.pem)
        return anchors, intermediates


def server_identity(folder: Path) -> tuple[Path, Path, Path]:
    """A TLS server certificate for 127.0.0.1 from its own CA: (CA file, certificate file, key file)."""
    ca = make_ca("Test Server CA")
    server = make_leaf(ca, "127.0.0.1", ips=["127.0.0.1"], eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    folder.mkdir(parents=True, exist_ok=True)
    ca_file = folder / "server-ca.pem"
    ca_file.write_bytes(ca.pem)
    cert, key = server.write(folder, "server")
    return ca_file, cert, key
