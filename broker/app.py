"""``create_app(settings)``: the FastAPI application. Nothing is built at import time."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from broker.context import Clock, utcnow
from broker.monitoring import instrument, process_ended
from broker.services import Services, build_services
from broker.settings import OidcStoreConfig, Settings
from broker.web import admin, devices, discovery, errors, health, ldap, mfa, oauth, oidc, portal, requests, saml
from broker.web.hardening import ObserveRequests, RequestLimits

WEB = Path(__file__).parent / "web"

# No inline script or style, no framing, no plugins: an injected script or a framing page gets nothing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self' {form_action}"
)


def create_app(settings: Settings, *, clock: Clock = utcnow, services: Services | None = None) -> FastAPI:
    """The web service over ``services`` (built here from ``settings`` when not given)."""
    services = services or build_services(settings, clock=clock)
    db = services.db
    audit = services.audit
    operations = services.operations
    sealer = services.sealer
    # Built now rather than at the first request: a configuration problem shows at start-up.
    broker = services.broker
    oauth_server = services.oauth
    provisioning = services.provisioning
    # Browser sign-in with every identity store (broker/signin).
    signin = services.signin
    metrics = services.metrics
    # What the on-call sees: latency of the database, audit appends and seals, the rate limiter's storage,
    # certificate expiry (broker/monitoring.py).
    saml_certificates = {name: connector.certificates for name, connector in broker.saml_connectors.items()}
    detach_metrics = instrument(
        metrics,
        db=db,
        audit=audit,
        sealer=sealer,
        ratelimiter=services.ratelimiter,
        settings=settings,
        saml_certificates=saml_certificates,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        audit.record(
            db,
            event="config.loaded",
            outcome="ok",
            reason="startup",
            detail={
                "mode": settings.mode,
                "roles": [r.name for r in settings.roles],
                "identity_stores": [s.name for s in settings.identity_stores],
            },
        )
        operations.start()
        sealer.start()
        yield
        operations.stop()
        sealer.stop()
        services.close()
        detach_metrics()
        process_ended()

    api_docs = settings.dev if settings.server.api_docs is None else settings.server.api_docs
    app = FastAPI(
        title="Identity broker",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/api/docs" if api_docs else None,
        openapi_url="/openapi.json" if api_docs else None,
        redoc_url=None,
    )
    app.state.services = services
    # Sign-in and the browser session (``broker.federation``), for the sign-in routes.
    app.state.broker = broker
    app.state.signin = signin
    app.state.oauth = oauth_server
    app.state.operations = operations
    app.state.ratelimiter = services.ratelimiter
    app.state.provisioning = provisioning
    app.state.templates = Jinja2Templates(directory=str(WEB / "templates"))
    # Every page says so when this is a development broker (base.html shows the banner).
    app.state.templates.env.globals["dev"] = settings.dev
    # Dev mode's credentials work against the local AWS emulator only; the credentials page says where it is.
    app.state.templates.env.globals["dev_aws_endpoint"] = settings.aws.sts_endpoint_url if settings.dev else None
    app.mount("/static", StaticFiles(directory=str(WEB / "static")), name="static")
    errors.install(app)
    app.include_router(health.router)
    app.include_router(portal.router)
    app.include_router(mfa.router)
    app.include_router(oauth.router)
    app.include_router(devices.router)  # certificate sign-in over mutual TLS
    app.include_router(admin.router)
    app.include_router(requests.router)  # the portal's just-in-time access pages
    if settings.oauth.cli.enabled:
        # The credential helper's sign-in (authorize, device, revoke) and its bearer API.
        from broker.web import api, native_apps

        app.include_router(native_apps.router)
        app.include_router(api.router)
    app.include_router(oidc.router)
    app.include_router(saml.router)
    app.include_router(ldap.router)  # directory (LDAP) sign-in form
    app.include_router(discovery.router)  # home realm discovery: /login asks for the e-mail address first
    if provisioning is not None:
        from broker.web import scim

        app.include_router(scim.router)
    if settings.dev:
        # The console landing page that stands in for AWS's console in dev mode (broker/web/dev.py).
        from broker.web import dev

        app.include_router(dev.router)

    # Form posts may redirect to the console federation endpoint.
    federation = settings.aws.federation_endpoint or ""
    form_action = federation.split("?", 1)[0] if federation else ""
    # ... and to OIDC identity providers (step-up from "Open console", RP-initiated logout from "Sign out").
    idp_origins = {
        "/".join(s.issuer.split("/", 3)[:3]) for s in settings.identity_stores if isinstance(s, OidcStoreConfig)
    }
    # ... and to SAML identity providers (home realm discovery's form redirects there).
    idp_origins |= {"/".join(c.sso_url.split("/", 3)[:3]) for c in broker.saml_connectors.values()}
    form_action = " ".join([form_action, *sorted(idp_origins)])
    if settings.oauth.cli.enabled:
        # ... and, from the CLI consent page, to the helper's one-shot loopback listener (RFC 8252 section 7.3).
        form_action += " http://127.0.0.1:*"
    csp = CSP.format(form_action=form_action).strip()
    hsts = settings.public_url.startswith("https://") or settings.server.tls_cert_file is not None

    security_headers = [
        ("Content-Security-Policy", csp),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()"),
    ]
    if hsts:
        security_headers.append(("Strict-Transport-Security", "max-age=31536000; includeSubDomains"))
    app.add_middleware(ObserveRequests, headers=security_headers, metrics=metrics)
    # Outermost of the app's own middleware: size caps apply before routing, parsing or the log line.
    app.add_middleware(
        RequestLimits, max_body_bytes=settings.server.max_body_bytes, max_header_bytes=settings.server.max_header_bytes
    )
    return app


def from_environment() -> FastAPI:
    """uvicorn factory for `broker serve` (one call per worker process): reads BROKER_CONFIG."""
    from broker import logs
    from broker.settings import load_settings

    settings = load_settings(os.environ.get("BROKER_CONFIG", "config/broker.yaml"))
    logs.configure(settings.log_level, json=settings.log_json)
    return create_app(settings)
