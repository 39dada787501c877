"""The composition root: every service the broker runs, built from the validated settings in one place.

``build_services(settings)`` is called once per process by the web application (``broker.app.create_app``),
by dev mode (through ``create_app``) and by each operator command (``broker.cli``). Each piece is built on
first use and then shared, so a command that lists sessions opens the database and builds the operations
layer, and never an STS client, a signing key or a sign-in connector. Nothing here runs at import time.

Dependencies go one way, each handed over through its constructor:

    db, keys, audit (clock)
      -> operations (notifier, revocations, elevation, monitor) <- provisioned (SCIM directory)
      -> issuance (sts, provisioned, elevation's active grants)
      -> broker (sign-in: connectors, sessions, step-up; mfa, directory, issuance)
      -> oauth (token endpoint, CLI sign-in, devices), ratelimiter, sealer, provisioning (SCIM)
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.audit import AuditTrail
    from broker.aws.revoke import RoleRevoker
    from broker.aws.sts import Sts
    from broker.context import Clock
    from broker.devices import DeviceRevocations
    from broker.federation import Broker
    from broker.issuance import Issuance, Provisioned
    from broker.keys import Keys
    from broker.mfa.service import MfaService
    from broker.monitoring import Metrics
    from broker.oauth.server import OAuthServer
    from broker.oauth.tokens import TokenService
    from broker.operations import Operations
    from broker.ratelimit import RateLimiter
    from broker.scim.directory import Directory
    from broker.scim.service import Provisioning
    from broker.sealer import Sealer
    from broker.settings import Settings
    from broker.signin.use_case import SignIn
    from broker.store.db import Database


class Services:
    """The broker's services for one process, each built on first use from ``settings`` (see module doc)."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None, sts: Sts | None = None) -> None:
        if clock is None:
            from broker.context import utcnow

            clock = utcnow
        self.settings = settings
        self.clock: Clock = clock
        self._sts = sts

    # ------------------------------------------------------------ storage, keys, audit

    @cached_property
    def db(self) -> Database:
        from broker.store.db import Database

        return Database(self.settings.database_url)

    @cached_property
    def keys(self) -> Keys:
        from broker.keys import Keys

        return Keys(self.settings.root_keys)

    @cached_property
    def audit(self) -> AuditTrail:
        from datetime import timedelta

        from broker.audit import AuditTrail

        window = timedelta(seconds=self.settings.audit.seal_window_seconds)
        return AuditTrail(self.keys, self.clock, seal_window=window)

    @cached_property
    def metrics(self) -> Metrics:
        from broker.monitoring import Metrics

        return Metrics()

    # ------------------------------------------------------------ AWS

    @cached_property
    def tokens(self) -> TokenService:
        """The broker's own signing keys: access tokens, and (``aws.mode: web_identity``) the tokens STS
        trusts instead of an AWS access key."""
        from broker.oauth.tokens import TokenService

        return TokenService(self.settings, db=self.db, keys=self.keys, clock=self.clock)

    @cached_property
    def sts(self) -> Sts:
        if self._sts is not None:
            return self._sts
        from broker.monitoring import TimedSts

        web_identity = self.tokens.web_identity_token if self.settings.aws.mode == "web_identity" else None
        return TimedSts(self.settings.aws, web_identity_token=web_identity, metrics=self.metrics)

    @cached_property
    def revoker(self) -> RoleRevoker | None:
        from broker.operations import build_revoker

        return build_revoker(self.settings.aws)

    # ------------------------------------------------------------ decisions and administration

    @cached_property
    def directory(self) -> Directory:
        """People and groups provisioned over SCIM: their state and groups count at every decision."""
        from broker.scim.directory import Directory

        return Directory(self.settings.scim)

    @cached_property
    def provisioned(self) -> Provisioned:
        from broker.issuance import Provisioned

        return Provisioned(self.directory, db=self.db)

    @cached_property
    def operations(self) -> Operations:
        """Notifier, revocation, just-in-time requests, alerts and the access report."""
        from broker.operations import Operations

        return Operations(
            self.settings,
            db=self.db,
            audit=self.audit,
            clock=self.clock,
            provisioned=self.provisioned,
            metrics=self.metrics,
            revoker=self.revoker,
        )

    @cached_property
    def device_revocations(self) -> DeviceRevocations:
        from broker.devices import DeviceRevocations

        ops = self.operations
        return DeviceRevocations(db=self.db, audit=self.audit, revocations=ops.revocations, clock=self.clock)

    @cached_property
    def issuance(self) -> Issuance:
        from broker.issuance import Issuance

        return Issuance(
            self.settings,
            db=self.db,
            audit=self.audit,
            sts=self.sts,
            clock=self.clock,
            provisioned=self.provisioned,
            active_grants=self.operations.elevation.active_grants,
        )

    @cached_property
    def mfa(self) -> MfaService:
        """Factors the broker holds itself (TOTP, WebAuthn, recovery codes)."""
        from broker.mfa.service import MfaService

        return MfaService(self.settings, db=self.db, keys=self.keys, audit=self.audit, clock=self.clock)

    # ------------------------------------------------------------ sign-in and the web service

    @cached_property
    def broker(self) -> Broker:
        """The connectors, the browser session and the portal's view of roles."""
        from broker.federation import Broker

        return Broker(
            self.settings,
            db=self.db,
            keys=self.keys,
            audit=self.audit,
            issuance=self.issuance,
            mfa=self.mfa,
            directory=self.directory,
            clock=self.clock,
        )

    @cached_property
    def signin(self) -> SignIn:
        """Browser sign-in with every identity store (``broker.signin``)."""
        from broker.signin.use_case import SignIn

        broker = self.broker
        return SignIn(
            db=self.db,
            audit=self.audit,
            keys=self.keys,
            clock=self.clock,
            sessions=broker.sessions,
            connectors=broker.connector_registry,
            roles=self.settings.roles,
            discovery=broker.discovery,
            limiter=self.ratelimiter,
            console=broker.console_url,
        )

    @cached_property
    def ratelimiter(self) -> RateLimiter:
        """Abuse limits: in-process counters, or shared through Redis across processes."""
        from broker.ratelimit import RateLimiter

        return RateLimiter(self.settings.rate_limits, keys=self.keys, audit=self.audit, db=self.db)

    @cached_property
    def oauth(self) -> OAuthServer:
        from broker.oauth.server import OAuthServer

        return OAuthServer(
            self.settings,
            db=self.db,
            audit=self.audit,
            keys=self.keys,
            clock=self.clock,
            issuance=self.issuance,
            tokens=self.tokens,
            limits=self.ratelimiter,
        )

    @cached_property
    def sealer(self) -> Sealer:
        """Seals the audit trail in the background and publishes signed digests."""
        from broker.sealer import build_sealer

        return build_sealer(self.audit, self.db, self.settings.audit)

    @cached_property
    def provisioning(self) -> Provisioning | None:
        """SCIM provisioning, only when a provisioning client is configured (its libraries load only then)."""
        if not self.settings.scim.clients:
            return None
        from broker.scim.service import Provisioning

        return Provisioning(
            self.settings.scim,
            db=self.db,
            audit=self.audit,
            revocations=self.operations.revocations,
            clock=self.clock,
        )

    # ------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Release what was built: HTTP clients, limiter connections, database pools."""
        built = self.__dict__
        if "oauth" in built:
            self.oauth.close()
        if "ratelimiter" in built:
            self.ratelimiter.close()
        if "db" in built:
            self.db.dispose()


def build_services(settings: Settings, *, clock: Clock | None = None, sts: Sts | None = None) -> Services:
    """The services of one process. ``clock`` defaults to the wall clock (UTC); ``sts`` replaces the STS client
    (tests hand in one bound to moto)."""
    return Services(settings, clock=clock, sts=sts)
