"""What provisioning means at decision time: the provisioned person, their state and their groups.

Read by the use cases (``broker.federation``) at every sign-in and every issuance, so a change a SCIM client
makes (a person made inactive or deleted, a group membership added or removed) counts at the very next
decision, whatever the person's sign-in asserted when it started. This module reads the store only; the
SCIM protocol itself lives in ``broker.scim.service``.

A sign-in from an identity store that a SCIM client provisions finds its provisioned user by the client's
``match`` field: the identity's username or e-mail against ``userName`` (case-insensitive, RFC 7643 section
4.1.1), or its subject against ``externalId`` (exact).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from broker.errors import AccessDenied
from broker.identity import Identity
from broker.settings import ScimClientConfig, ScimSettings
from broker.store import queries
from broker.store.db import Session
from broker.store.models import Principal, ScimUser


def fold(value: str) -> str:
    """The comparison key of a case-insensitive SCIM string (userName, displayName, e-mail)."""
    return value.casefold()


def find_user(session: Session, client: ScimClientConfig, identity: Identity) -> ScimUser | None:
    """The provisioned user this sign-in identity is, by the client's ``match`` field."""
    store = client.store
    if client.match == "subject":
        found = queries.find_scim_users(session, store=store, external_id=identity.subject)
    elif client.match == "email":
        if not identity.email:
            return None
        key = fold(identity.email)
        found = queries.find_scim_users(session, store=store, user_name_key=key) or queries.find_scim_users(
            session, store=store, email_key=key
        )
    else:
        found = queries.find_scim_users(session, store=store, user_name_key=fold(identity.username))
    # userName is unique per store; externalId and e-mail are not, and an ambiguous match admits nobody.
    return found[0] if len(found) == 1 else None


def principals_of(session: Session, client: ScimClientConfig, user: ScimUser) -> list[Principal]:
    """The broker principals that are this provisioned user: the linked one and every one the match finds."""
    if client.match == "subject":
        found = list(queries.principals_of_store(session, store=client.store, subject=user.external_id or "\0"))
    elif client.match == "email":
        found = list(queries.principals_of_store(session, store=client.store, email=user.user_name))
        if user.email_key:
            found += queries.principals_of_store(session, store=client.store, email=user.email_key)
    else:
        found = list(queries.principals_of_store(session, store=client.store, username=user.user_name))
    if user.principal_id is not None:
        linked = queries.get_principal(session, principal_id=user.principal_id)
        if linked is not None:
            found.append(linked)
    unique = {p.id: p for p in found}
    return [unique[key] for key in sorted(unique)]


class Directory:
    """The provisioned view of identities from stores that a SCIM client governs."""

    def __init__(self, settings: ScimSettings) -> None:
        self._clients = {client.store: client for client in settings.clients}

    def governs(self, store: str) -> bool:
        return store in self._clients

    def resolve(self, session: Session, identity: Identity) -> Identity:
        """The identity with its provisioned groups, or :class:`AccessDenied` when provisioning says no.

        Identities from stores no SCIM client governs come back unchanged.
        """
        client = self._clients.get(identity.store)
        if client is None:
            return identity
        user = find_user(session, client, identity)
        if user is None:
            if client.required:
                raise AccessDenied(
                    "Your account is not provisioned for this broker. Ask your administrator to assign you to it "
                    "in the identity provider.",
                    reason="scim.not_provisioned",
                )
            return identity
        if not user.active:
            raise AccessDenied(
                "Your account is deactivated in the identity provider. Ask your administrator.",
                reason="scim.user_inactive",
            )
        groups = frozenset(g.display_name for g in queries.scim_groups_of(session, user_ids=[user.id])[user.id])
        if client.groups_from == "merge":
            groups |= identity.groups
        return replace(identity, groups=groups)

    def link(self, session: Session, identity: Identity, *, principal_id: int, now: datetime) -> None:
        """At sign-in: record which principal the provisioned user is, and that they signed in."""
        client = self._clients.get(identity.store)
        if client is None:
            return
        user = find_user(session, client, identity)
        if user is not None:
            queries.link_scim_user(session, user_id=user.id, principal_id=principal_id, now=now)
