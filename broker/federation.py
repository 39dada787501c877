"""What the portal pages share after sign-in: the identity-store connectors, the browser session, and the roles
a person sees (sign-in itself is :mod:`broker.signin`; issuance is :mod:`broker.issuance`).

``Broker`` is built once per process by the composition root (``broker.services``), which hands it the pieces
it uses. Every refusal is audited with its reason before it is raised, and credentials leave only after their
issuance row and audit event have committed together (fail closed).
"""

from __future__ import annotations

from broker.audit import AuditTrail
from broker.connectors.base import Connector
from broker.connectors.registry import build_connectors
from broker.context import Clock, Context, utcnow
from broker.discovery import Discovery
from broker.identity import Channel, Identity
from broker.issuance import Issuance, Issued
from broker.issuance import RoleView as RoleView  # what the portal lists, re-exported for the sign-in pages
from broker.keys import Keys
from broker.mfa.service import MfaService
from broker.scim.directory import Directory
from broker.settings import RoleConfig, Settings
from broker.signin.sessions import CurrentSession, Sessions, SignedIn
from broker.store.db import Database


class Broker:
    """The connectors, sessions, discovery and factors of one process, and the portal's view of roles.

    Built once per process by the composition root (``broker.services``). Sign-in is ``broker.signin``;
    issuance ``broker.issuance``; administration ``broker.operations``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        keys: Keys,
        audit: AuditTrail,
        issuance: Issuance,
        mfa: MfaService,
        directory: Directory,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.keys = keys
        self.audit = audit
        # Decides and issues credentials (the console link after a step-up; ``provisioned`` at sign-in).
        self.issuance = issuance
        # One connector per identity store (broker.connectors.registry).
        self.connector_registry = build_connectors(settings, clock=lambda: self.clock().timestamp())
        self.local_connectors = self.connector_registry.local
        self.oidc_connectors = self.connector_registry.oidc
        self.saml_connectors = self.connector_registry.saml
        self.ldap_connectors = self.connector_registry.ldap
        self.connectors: dict[str, Connector] = self.connector_registry.by_name
        # Home realm discovery: which store owns an e-mail address's domain.
        self.discovery = Discovery(settings)
        # Factors the broker holds itself (TOTP, WebAuthn, recovery codes): step-up after any sign-in.
        self.mfa = mfa
        # People and groups provisioned over SCIM: their state and groups count at every decision.
        self.directory = directory
        self.sessions = Sessions(
            settings.session,
            db=db,
            audit=audit,
            keys=keys,
            directory=directory,
            clock=lambda: self.clock(),
        )

    # ------------------------------------------------------------ sessions (broker.signin.sessions)

    def session_hmac(self, session_id: str) -> str:
        return self.sessions.hmac(session_id)

    def csrf_token(self, session_id: str) -> str:
        return self.sessions.csrf_token(session_id)

    def csrf_matches(self, session_id: str, token: str) -> bool:
        return self.sessions.csrf_matches(session_id, token)

    def start_session(
        self,
        identity: Identity,
        ctx: Context,
        *,
        previous_session: str | None,
        event: str = "login",
        detail: dict[str, object] | None = None,
    ) -> SignedIn:
        return self.sessions.start(identity, ctx, previous_session=previous_session, event=event, detail=detail)

    def current_session(self, session_id: str | None) -> CurrentSession:
        return self.sessions.current(session_id)

    # ------------------------------------------------------------ roles and issuance (broker.issuance)

    def provisioned(self, identity: Identity) -> Identity:
        """The identity as provisioning has it now (``broker.issuance.Provisioned``)."""
        return self.issuance.provisioned(identity)

    def issue(
        self,
        identity: Identity,
        *,
        role: str,
        channel: Channel,
        ctx: Context,
        duration_seconds: int | None = None,
        session_hmac: str | None = None,
    ) -> Issued:
        """Credentials for the portal's credentials page (``broker.issuance.Issuance.issue``)."""
        return self.issuance.issue(
            identity, role=role, channel=channel, ctx=ctx, duration_seconds=duration_seconds, session_hmac=session_hmac
        )

    def console_url(
        self,
        identity: Identity,
        *,
        role: str,
        ctx: Context,
        duration_seconds: int | None = None,
        session_hmac: str | None = None,
    ) -> str:
        """A console sign-in link (``broker.issuance.Issuance.console_url``)."""
        return self.issuance.console_url(
            identity, role=role, ctx=ctx, duration_seconds=duration_seconds, session_hmac=session_hmac
        )

    def roles_for(self, identity: Identity) -> list[RoleView]:
        """The portal's roles, each marked when the identity's OIDC provider can be asked for the missing
        strength (a step-up)."""

        def step_up(identity: Identity, role: RoleConfig) -> bool:
            oidc = self.oidc_connectors.get(identity.store)
            return bool(oidc and oidc.step_up_acr_values(role.mfa))

        return self.issuance.roles_for(identity, step_up=step_up)
