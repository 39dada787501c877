"""The SCIM service the broker announces (RFC 7643 sections 5 to 7): User (with the enterprise extension
that Entra ID and Okta send) and Group, from scim2-server's copy of the RFC 7643 schemas.

What is announced is what the storage implements: PATCH, filters (capped at ``scim.max_results`` per page),
ETags; no bulk, no sorting, no password change (the broker keeps no passwords for provisioned people).
"""

from __future__ import annotations

from typing import Any

from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    ETag,
    External,
    Filter,
    Patch,
    Reference,
    ScimPolicy,
    ScimProvider,
    ServiceProviderConfig,
    Sort,
)
from scim2_server.utils import load_default_resource_types, load_default_schemas

from broker.settings import ScimSettings

USER = "User"
GROUP = "Group"

BEARER = AuthenticationScheme(
    type=AuthenticationScheme.Type.oauthbearertoken,
    name="Bearer token",
    description="A per-client bearer token made with `broker scim token` (RFC 6750)",
    spec_uri=Reference[External]("https://www.rfc-editor.org/rfc/rfc6750"),
    primary=True,
)


def service_provider_config(settings: ScimSettings) -> ServiceProviderConfig:
    return ServiceProviderConfig(
        documentation_uri=Reference[External]("https://www.rfc-editor.org/rfc/rfc7644"),
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=settings.max_results),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=True),
        authentication_schemes=[BEARER],
    )


# Where Microsoft Entra ID departs from RFC 7644 (section 3.5.2.2), the broker follows Entra, as scim2-models
# allows: a ``remove`` whose ``value`` lists the members to remove, and a PATCH on ``emails[type eq "work"]``
# that creates the entry when the person has none. Attributes no schema declares are still refused.
POLICY = ScimPolicy(
    remove_value_as_filter=ScimPolicy.RemoveValue.apply,
    unmatched_path_filter=ScimPolicy.UnmatchedPathFilter.create,
)


def provider(settings: ScimSettings) -> ScimProvider:
    """The description every SCIM response and the discovery endpoints come from."""
    schemas = load_default_schemas().values()
    resource_types = [rt for rt in load_default_resource_types().values() if rt.name in (USER, GROUP)]
    config = service_provider_config(settings)
    return ScimProvider.from_discovery(schemas, resource_types, config=config, policy=POLICY)


def without(document: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key not in keys}
