"""The ASGI TLS extension for ``broker serve``: the client certificate of a mutual-TLS connection.

uvicorn terminates TLS but does not pass the client certificate to the application. :class:`TlsH11Protocol`
adds, per connection, the ASGI TLS extension's ``client_cert_chain`` (PEM strings, leaf first; Python's
``ssl`` module exposes only the leaf before 3.13) and the TCP peer address as it was before any
X-Forwarded-For rewriting (``broker.web.devices`` believes forwarded certificates only from configured
proxy addresses). It wraps the application from outside uvicorn's proxy-headers middleware, so it sees the
connection as it is.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

TCP_PEER_EXTENSION = "broker.tcp_peer"


class TlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, adding the TLS extension and the raw TCP peer to every request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        extensions: dict[str, Any] = {}
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            extensions[TCP_PEER_EXTENSION] = str(peer[0])
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            extensions["tls"] = {
                "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
                "tls_version": None,
                "cipher_suite": None,
            }
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope.get("type") == "http":
                scope["extensions"] = {**(scope.get("extensions") or {}), **extensions}
            await inner(scope, receive, send)

        self.app = app
