"""The rig for certificate sign-in tests: a CA hierarchy on disk, its CRLs served over HTTP on loopback, an
STS proxy that counts calls, the broker's ``type: x509`` configuration, and assertions signed like a device.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from joserfc import jws
from joserfc.jwk import ECKey

from tests.support.certificates import Hierarchy, Issued, make_crl
from tests.support.loopback import LoopbackServer
from tests.support.records import Records

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
STORE = "edge"
ROLE = "edge-telemetry"
ROLE_ARN = "arn:aws:iam::123456789012:role/EdgeTelemetry"
PUBLIC_URL = "http://127.0.0.1:8000"
AUDIENCE = PUBLIC_URL + "/oauth2/token"


@dataclass
class DeviceWorld:
    """One CA hierarchy (root -> name-constrained intermediate), a revoked device, and the HTTP peers."""

    folder: Path
    crl_server: LoopbackServer
    sts_proxy: LoopbackServer
    hierarchy: Hierarchy = field(default_factory=Hierarchy)
    revoked: Issued = field(init=False)

    def __post_init__(self) -> None:
        self.revoked = self.hierarchy.device("gw-revoked")
        self.anchors, self.intermediates = self.hierarchy.write(self.folder)
        self.serve_crls()

    def serve_crls(self, **kwargs: Any) -> None:
        self.crl_server.routes["/edge.crl"] = (200, make_crl(self.hierarchy.intermediate, [self.revoked], **kwargs))
        self.crl_server.routes["/root.crl"] = (200, make_crl(self.hierarchy.root, []))

    @property
    def crl_urls(self) -> list[str]:
        return [self.crl_server.url + "/edge.crl", self.crl_server.url + "/root.crl"]

    def store(self, **overrides: Any) -> dict[str, Any]:
        store: dict[str, Any] = {
            "type": "x509",
            "name": STORE,
            "trust_anchors": [str(self.anchors)],
            "intermediates": [str(self.intermediates)],
            "crl_urls": self.crl_urls,
            "rules": [
                {
                    "match": {"san.uri": "spiffe://corp.example/edge/*", "issuer.CN": "Corp Edge Issuing CA"},
                    "subject": "{san.uri}",
                    "username": "{subject.CN}",
                    "groups": ["edge-gateways"],
                    "attributes": {"device_id": "{subject.CN}", "site": "{subject.O}"},
                }
            ],
        }
        store.update(overrides)
        return store

    def config(self, base: dict[str, Any], **store_overrides: Any) -> dict[str, Any]:
        base["aws"]["sts_endpoint_url"] = self.sts_proxy.url
        base["identity_stores"] = [self.store(**store_overrides)]
        base["roles"].append(
            {
                "name": ROLE,
                "role_arn": ROLE_ARN,
                "mfa": "none",
                "max_duration_seconds": 3600,
                "grant": [{"stores": [STORE], "groups": ["edge-gateways"]}],
                "session_tags": {"DeviceId": "{attr.device_id}"},
            }
        )
        return base


@contextlib.contextmanager
def device_world(folder: Path, sts_endpoint: str) -> Iterator[DeviceWorld]:
    with LoopbackServer() as crl_server, LoopbackServer(proxy_to=sts_endpoint) as sts_proxy:
        yield DeviceWorld(folder, crl_server, sts_proxy)


def x5c(*certificates: Issued) -> list[str]:
    return [base64.b64encode(c.der).decode() for c in certificates]


def assertion(
    device: Issued,
    *,
    chain: list[Issued] | None = None,
    signer: Any = None,
    audience: str = AUDIENCE,
    lifetime: int = 60,
    iat: int | None = None,
    jti: str | None = None,
    header: dict[str, Any] | None = None,
    x5c_values: list[str] | None = None,
) -> str:
    """An RFC 7523 assertion as a device signs it: ES256 with its key, the chain in ``x5c``."""
    key_pem = (signer or device.key).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    issued_at = int(time.time()) if iat is None else iat
    claims = {
        "iss": "gw",
        "sub": "gw",
        "aud": audience,
        "iat": issued_at,
        "exp": issued_at + lifetime,
        "jti": jti or secrets.token_urlsafe(16),
    }
    protected = {"alg": "ES256", "typ": "JWT", "x5c": x5c_values or x5c(device, *(chain or [])), **(header or {})}
    return jws.serialize_compact(protected, json.dumps(claims).encode(), ECKey.import_key(key_pem))


class DeviceBroker(Records):
    """A running broker with an x509 store, and the refusal contract its tests check."""

    def __init__(self, url: str, db_url: str, world: DeviceWorld) -> None:
        self.url = url
        self.db_url = db_url
        self.world = world

    def token(self, signed: str, role: str = ROLE, **extra: str) -> httpx.Response:
        data = {"grant_type": JWT_BEARER, "assertion": signed, "role": role, **extra}
        return httpx.post(f"{self.url}/oauth2/token", data=data, timeout=30)

    def sts_calls(self) -> int:
        return self.world.sts_proxy.hit_count()

    def refused(
        self,
        response: httpx.Response,
        *,
        code: str,
        reason: str,
        before: int,
        sts_before: int,
        status: int = 400,
        certificate: Issued | None = None,
        issued: int = 0,
    ) -> None:
        """A clear error, no credentials, no STS call, exactly one audit event naming the check (and cert)."""
        assert response.status_code == status, response.text
        body = response.json()
        assert body["error"] == code, body
        assert "aws_credentials" not in body and "access_token" not in body
        assert self.sts_calls() == sts_before
        assert len(self.issuances()) == issued
        events = self.audit(after=before)
        assert len(events) == 1, [(e.event, e.reason) for e in events]
        assert events[0].outcome == "denied" and events[0].reason == reason, (events[0].event, events[0].reason)
        if certificate is not None:
            detail = events[0].detail
            assert detail["fingerprint"] == certificate.fingerprint
            assert detail["serial"] == certificate.serial_hex
            assert detail["issuer"] == certificate.certificate.issuer.rfc4514_string()
