"""Every configured identity store's connector, built once from the settings, by kind.

The sign-in use case looks a store up by name and flow (a password form may not name an OIDC store); the
sign-in page lists :attr:`Connectors.ordered`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from broker.connectors.base import Connector
from broker.connectors.ldap import LdapConnector
from broker.connectors.local import LocalConnector
from broker.connectors.oidc import OidcConnector
from broker.connectors.saml import SamlConnector
from broker.errors import NotFound
from broker.settings import LdapStoreConfig, OidcStoreConfig, SamlStoreConfig, Settings

NO_SUCH_OPTION = "There is no such sign-in option."


@dataclass(frozen=True)
class Connectors:
    local: dict[str, LocalConnector]
    oidc: dict[str, OidcConnector]
    saml: dict[str, SamlConnector]
    ldap: dict[str, LdapConnector]

    @property
    def by_name(self) -> dict[str, Connector]:
        """Every store by name: break-glass accounts first, then OIDC, SAML and directories."""
        return {**self.local, **self.oidc, **self.saml, **self.ldap}

    @property
    def ordered(self) -> list[Connector]:
        return list(self.by_name.values())

    def get(self, name: str) -> Connector | None:
        return self.by_name.get(name)

    def start_path(self, connector: Connector) -> str:
        """Where a sign-in with this store starts: its own ``start_path`` (SAML, LDAP), else ``/login/{name}``
        (OIDC, and break-glass accounts, whose form is on the sign-in page)."""
        return str(getattr(connector, "start_path", None) or f"/login/{connector.name}")

    def local_store(self, name: str) -> LocalConnector:
        return _found(self.local.get(name))

    def ldap_store(self, name: str) -> LdapConnector:
        return _found(self.ldap.get(name))

    def oidc_store(self, name: str) -> OidcConnector:
        return _found(self.oidc.get(name))

    def saml_store(self, name: str) -> SamlConnector:
        connector = self.saml.get(name)
        if connector is None:
            raise NotFound("There is no such SAML sign-in option.")
        return connector


C = TypeVar("C")


def _found(connector: C | None) -> C:
    if connector is None:
        raise NotFound(NO_SUCH_OPTION)
    return connector


def build_connectors(settings: Settings, *, clock: Callable[[], float]) -> Connectors:
    """One connector per configured store; ``clock`` is the broker's clock in seconds (ID token checks)."""
    stores = settings.identity_stores
    public_url = settings.public_url
    return Connectors(
        local={s.name: LocalConnector(s, issuer=public_url) for s in stores if s.type == "local"},
        oidc={
            s.name: OidcConnector(
                s,
                redirect_uri=f"{public_url}/oidc/{s.name}/callback",
                post_logout_redirect_uri=f"{public_url}/signed-out",
                clock=clock,
            )
            for s in stores
            if isinstance(s, OidcStoreConfig)
        },
        saml={s.name: SamlConnector(s, public_url=public_url) for s in stores if isinstance(s, SamlStoreConfig)},
        ldap={s.name: LdapConnector(s) for s in stores if isinstance(s, LdapStoreConfig)},
    )
