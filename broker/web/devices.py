"""Mutual-TLS certificate sign-in: ``POST /device/credentials`` (the shape of AWS IoT's credentials provider).

The client certificate comes from one of two places, never both:

- the TLS connection, when the broker terminates TLS itself (``devices.tls_client_ca_file``): the ASGI TLS
  extension's ``client_cert_chain`` (``broker.web.tls`` fills it in under ``broker serve``);
- a header set by a TLS-terminating proxy listed in ``devices.trusted_proxies``: Envoy's
  ``x-forwarded-client-cert`` (``Cert=``/``Chain=``, URL-encoded PEM) or nginx's ``$ssl_client_escaped_cert``.
  The header is believed only when the TCP peer (not an X-Forwarded-For value) is that proxy; from anyone
  else it is refused and audited, since a client could otherwise name any certificate it has seen.

Possession of the key was proven in the TLS handshake (at the broker or at the proxy); everything else
(path, revocation, mapping, role) is ``broker.devices``.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from broker.connectors.x509 import pem_to_der, tcp_peer_allowed
from broker.context import Context
from broker.devices import DeviceRequest, Devices
from broker.errors import AccessDenied, AuthenticationFailed, BrokerError, InvalidRequest, NotFound
from broker.ratelimit import rate_limited
from broker.settings import DeviceSettings, ForwardedCertificateProxy
from broker.web.deps import ContextDep
from broker.web.tls import TCP_PEER_EXTENSION

router = APIRouter(tags=["devices"])
CREDENTIALS_PATH = "/device/credentials"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# A forwarded PEM chain of a few certificates, URL-encoded; headers are capped by the server anyway.
MAX_FORWARDED_BYTES = 32 * 1024


def get_devices(request: Request) -> Devices:
    devices: Devices = request.app.state.oauth.devices
    if not devices.enabled:
        raise NotFound()
    return devices


DevicesDep = Annotated[Devices, Depends(get_devices)]


def tcp_peer(request: Request) -> str | None:
    """The address of the TCP peer itself, before any X-Forwarded-For rewriting."""
    extensions = request.scope.get("extensions") or {}
    peer = extensions.get(TCP_PEER_EXTENSION)
    if isinstance(peer, str):
        return peer
    return request.client.host if request.client else None


def presented_chain(request: Request, settings: DeviceSettings, detail: dict[str, Any]) -> tuple[list[bytes], str]:
    """(DER chain, proof kind) from the TLS connection or a trusted proxy's header; notes go into ``detail``."""
    extensions = request.scope.get("extensions") or {}
    tls = extensions.get("tls") or {}
    tls_chain = tls.get("client_cert_chain") or []
    peer = tcp_peer(request)
    forwarded = {
        name: request.headers[name]
        for name in {p.header_name for p in settings.trusted_proxies} | {"x-forwarded-client-cert", "x-ssl-client-cert"}
        if name in request.headers
    }
    detail["tcp_peer"] = peer
    if forwarded:
        detail["forwarded_headers"] = sorted(forwarded)
        proxy = next(
            (p for p in settings.trusted_proxies if p.header_name in forwarded and tcp_peer_allowed(peer, p.addresses)),
            None,
        )
        if proxy is None:
            raise AccessDenied(
                "A forwarded client certificate is accepted only from a configured proxy "
                "(devices.trusted_proxies); this connection does not come from one.",
                reason="x509.forwarded_untrusted_peer",
            )
        if tls_chain or len(forwarded) > 1:
            raise InvalidRequest("Present one client certificate, not several.", reason="x509.ambiguous_certificate")
        detail["proof"] = f"forwarded:{proxy.format}"
        return _forwarded(proxy, forwarded[proxy.header_name]), detail["proof"]
    if tls_chain:
        return [d for pem in tls_chain for d in pem_to_der(str(pem).encode())], "mtls"
    raise AuthenticationFailed(
        "No client certificate was presented. Connect with the device's certificate and key (mutual TLS).",
        reason="x509.no_client_certificate",
    )


def _forwarded(proxy: ForwardedCertificateProxy, value: str) -> list[bytes]:
    if len(value) > MAX_FORWARDED_BYTES:
        raise InvalidRequest("The forwarded certificate header is too large.", reason="x509.chain_too_large")
    if proxy.format == "nginx":
        return pem_to_der(unquote(value).encode())
    elements = _split(value, ",")
    if len(elements) != 1:
        # Each proxy hop appends an element; only the one proxy the broker trusts may speak.
        raise InvalidRequest(
            "The x-forwarded-client-cert header names several clients.", reason="x509.ambiguous_certificate"
        )
    pairs: dict[str, str] = {}
    for item in _split(elements[0], ";"):
        key, _, raw = item.partition("=")
        pairs[key.strip().lower()] = raw.strip().strip('"')
    pem = pairs.get("chain") or pairs.get("cert")
    if not pem:
        raise InvalidRequest(
            "The proxy forwarded no certificate (Cert= or Chain=).", reason="x509.no_client_certificate"
        )
    return pem_to_der(unquote(pem).encode())


def _split(value: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes (Envoy quotes values that contain , ; or =)."""
    parts, current, quoted = [], "", False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


@router.post(
    CREDENTIALS_PATH,
    summary="AWS credentials for a device's client certificate (mutual TLS)",
    dependencies=[rate_limited("token", per="ip")],
)
async def credentials(
    request: Request,
    devices: DevicesDep,
    ctx: ContextDep,
    role: Annotated[str, Form(max_length=2048, description="Role name or ARN")],
    duration_seconds: Annotated[str | None, Form(max_length=6)] = None,
) -> JSONResponse:
    result: dict[str, Any] = await run_in_threadpool(_sign_in, devices, request, role, duration_seconds, ctx)
    return JSONResponse(result, headers=NO_STORE)


def _sign_in(devices: Devices, request: Request, role: str, duration: str | None, ctx: Context) -> dict[str, Any]:
    detail: dict[str, Any] = {"proof": "mtls"}
    try:
        ders, proof = presented_chain(request, devices.settings.devices, detail)
        device_request = DeviceRequest.of([role], duration)
    except BrokerError as exc:
        raise devices.deny(exc, ctx=ctx, detail=detail) from None
    return devices.sign_in(ders, device_request, proof=proof, ctx=ctx, detail=detail)
