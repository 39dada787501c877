"""Certificates as identities: certificate identity stores (devices and workloads holding a certificate from
the company's CA, verified by :mod:`broker.connectors.x509`) and where their certificates arrive (mutual TLS
at the broker, or a TLS-terminating proxy that forwards the verified certificate)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from broker import certificates
from broker.settings.base import NAME, Strict

_X509_FIELD = re.compile(
    r"^(subject|issuer)(\.[A-Za-z][A-Za-z0-9.]{0,63})?$|^(serial|fingerprint|san\.(uri|dns|email|ip))$"
)
_X509_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")


def _x509_template(value: str) -> str:
    for name in _X509_TEMPLATE_FIELD.findall(value):
        if not _X509_FIELD.match(name):
            raise ValueError(f"{{{name}}} is not a certificate field (subject.CN, san.uri, serial, ...)")
    return value


class X509MappingRule(Strict):
    """One way a certificate becomes an identity. Every ``match`` pattern must hold (shell-style globs, case
    sensitive; a multi-valued field such as ``san.uri`` matches when one value does). Templates fill
    ``{field}`` from the certificate; a rule whose templates name a field the certificate lacks is refused."""

    match: dict[str, str] = Field(min_length=1)
    subject: str = "{subject.CN}"
    username: str | None = None
    email: str | None = None
    groups: list[str] = []
    attributes: dict[str, str] = {}

    @field_validator("match")
    @classmethod
    def _fields(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _X509_FIELD.match(name):
                raise ValueError(f"{name!r} is not a certificate field (subject.CN, san.uri, issuer, serial, ...)")
        return value

    @model_validator(mode="after")
    def _templates(self) -> X509MappingRule:
        for template in [self.subject, self.username or "", self.email or "", *self.attributes.values()]:
            _x509_template(template)
        return self


class X509StoreConfig(Strict):
    """Devices and workloads that hold a certificate from the company's CA (owned by
    ``broker.connectors.x509``): trust anchors, optional intermediates, CRLs, and rules mapping certificate
    fields to an identity, so grant rules, session tags and SourceIdentity apply as for people."""

    type: Literal["x509"]
    name: str = Field(pattern=NAME.pattern)
    display_name: str = "Device certificates"
    # PEM files of the root (or issuing) CAs this store trusts; every certificate in them is an anchor.
    trust_anchors: list[Path] = Field(min_length=1)
    # PEM files of intermediate CAs used to build paths (never trusted on their own).
    intermediates: list[Path] = []
    # Also use intermediates the device presents (x5c, the TLS or proxy chain) to build the path. They must
    # still chain to an anchor; off means only the configured intermediates are used.
    client_intermediates: bool = True
    rules: list[X509MappingRule] = Field(min_length=1)
    # CRLs fetched over HTTP(S), each issued by a CA of this store. With any configured, the leaf's issuer
    # must have one here; intermediates are checked when their issuer has one.
    crl_urls: list[str] = []
    # deny: a CRL that cannot be fetched or is past its nextUpdate refuses sign-in (fail closed); allow: the
    # sign-in goes ahead and the audit event says revocation was not checked.
    crl_failure: Literal["deny", "allow"] = "deny"
    # A fetched CRL is used at most this long (and never past its nextUpdate) before it is fetched again.
    crl_max_age_seconds: int = Field(3600, ge=10, le=7 * 86400)
    crl_max_bytes: int = Field(10 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    crl_timeout_seconds: float = Field(5.0, gt=0, le=60)
    # Leaf plus presented intermediates; more is refused before parsing (real device chains hold 2 or 3).
    max_chain_certificates: int = Field(4, ge=1, le=10)
    # Signed assertions (RFC 7523) are minted per request: a longer exp - iat is refused.
    max_assertion_lifetime_seconds: int = Field(300, ge=30, le=3600)
    clock_skew_seconds: int = Field(60, ge=0, le=300)

    @field_validator("crl_urls")
    @classmethod
    def _crl_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.match(r"^https?://[^/?#]+", url):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return value

    @field_validator("trust_anchors", "intermediates")
    @classmethod
    def _pem_files(cls, value: list[Path]) -> list[Path]:

        problems = []
        for path in value:
            try:
                if not certificates.load_pem_certificates(path.read_bytes()):
                    problems.append(f"{path} holds no certificate")
            except OSError as exc:
                problems.append(f"cannot read {path}: {exc.strerror}")
            except ValueError:
                problems.append(f"{path} is not a PEM certificate file")
        if problems:
            raise ValueError("; ".join(problems))
        return value


class ForwardedCertificateProxy(Strict):
    """A TLS-terminating proxy that forwards the client certificate it verified. The header is believed only
    when the TCP peer is one of ``addresses`` (never the X-Forwarded-For value)."""

    addresses: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(min_length=1)
    # envoy: x-forwarded-client-cert (Cert= and Chain=, URL-encoded PEM); nginx: $ssl_client_escaped_cert.
    format: Literal["envoy", "nginx"]
    header: str | None = None

    @property
    def header_name(self) -> str:
        default = "x-forwarded-client-cert" if self.format == "envoy" else "x-ssl-client-cert"
        return (self.header or default).lower()


class DeviceSettings(Strict):
    """Certificate sign-in over mutual TLS (``POST /device/credentials``), at the broker or at a proxy."""

    # Serving TLS itself (server.tls_cert_file): ask clients for a certificate and let the TLS layer accept
    # those chaining to the CAs in this PEM file. The broker then validates the certificate itself in full.
    tls_client_ca_file: Path | None = None
    trusted_proxies: list[ForwardedCertificateProxy] = []

    @field_validator("tls_client_ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} does not exist")
        return value
