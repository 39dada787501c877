"""Typed configuration: one YAML file, environment overrides, validated at start-up.

The package is split along the configuration's seams; every public name is importable from here
(``from broker.settings import Settings, load_settings, OidcStoreConfig``):

- :mod:`~broker.settings.secrets`: ``env:NAME`` / ``file:/path`` references, ``secret_key``, keys, database URL
- :mod:`~broker.settings.stores`: identity stores (local, OIDC, SAML) and their union;
  :mod:`~broker.settings.directories` (LDAP, discovery); :mod:`~broker.settings.certificates` (X.509, mTLS)
- :mod:`~broker.settings.roles`: roles, grant rules, just-in-time requests, allowed hours
- :mod:`~broker.settings.oauth`: workload issuers, clients, audiences, the broker's tokens
- :mod:`~broker.settings.service`: sessions, AWS, rate limits, server, admin, alerts, MFA, audit, SCIM
- :mod:`~broker.settings.checks`: checks across sections, each with its YAML path
- :mod:`~broker.settings.loading`: :class:`Settings` and :func:`load_settings` (every problem in one pass)
"""

from broker.settings.base import STS_MAX_DURATION, STS_MIN_DURATION, Strict
from broker.settings.certificates import (
    DeviceSettings,
    ForwardedCertificateProxy,
    X509MappingRule,
    X509StoreConfig,
)
from broker.settings.checks import reference_problems
from broker.settings.directories import DiscoverySettings, LdapAttributes, LdapGroups, LdapStoreConfig
from broker.settings.loading import Settings, load_settings, read_yaml
from broker.settings.oauth import (
    TOKEN_EXCHANGE_GRANT,
    WORKLOAD_ALGORITHMS,
    AudienceBinding,
    CliSettings,
    OAuthClientConfig,
    OAuthSettings,
    TokenSettings,
    WorkloadAlgorithm,
    WorkloadIssuerConfig,
)
from broker.settings.roles import (
    TAG_PLACEHOLDERS,
    WEEKDAYS,
    AllowedHours,
    GrantRule,
    RequiresRequest,
    RoleConfig,
    Weekday,
)
from broker.settings.secrets import (
    MIN_SECRET_LENGTH,
    PLACEHOLDER_MARKERS,
    RootKeySetting,
    Secret,
    display_database_url,
    resolve_database_url,
    resolve_secret,
)
from broker.settings.service import (
    AdminSettings,
    AlertSettings,
    AuditAnchorSettings,
    AuditS3Sink,
    AuditSettings,
    AwsSettings,
    MfaSettings,
    NotificationSettings,
    RateLimitSettings,
    ScimClientConfig,
    ScimSettings,
    ServerSettings,
    SessionSettings,
)
from broker.settings.stores import (
    OIDC_SIGNING_ALGORITHMS,
    IdentityStoreConfig,
    LocalAccount,
    LocalStoreConfig,
    MfaMapping,
    OidcStoreConfig,
    SamlAttributeNames,
    SamlStepUp,
    SamlStoreConfig,
)

__all__ = [
    "MIN_SECRET_LENGTH",
    "OIDC_SIGNING_ALGORITHMS",
    "PLACEHOLDER_MARKERS",
    "STS_MAX_DURATION",
    "STS_MIN_DURATION",
    "TAG_PLACEHOLDERS",
    "TOKEN_EXCHANGE_GRANT",
    "WEEKDAYS",
    "WORKLOAD_ALGORITHMS",
    "AdminSettings",
    "AlertSettings",
    "AllowedHours",
    "AudienceBinding",
    "AuditAnchorSettings",
    "AuditS3Sink",
    "AuditSettings",
    "AwsSettings",
    "CliSettings",
    "DeviceSettings",
    "DiscoverySettings",
    "ForwardedCertificateProxy",
    "GrantRule",
    "IdentityStoreConfig",
    "LdapAttributes",
    "LdapGroups",
    "LdapStoreConfig",
    "LocalAccount",
    "LocalStoreConfig",
    "MfaMapping",
    "MfaSettings",
    "NotificationSettings",
    "OAuthClientConfig",
    "OAuthSettings",
    "OidcStoreConfig",
    "RateLimitSettings",
    "RequiresRequest",
    "RoleConfig",
    "RootKeySetting",
    "SamlAttributeNames",
    "SamlStepUp",
    "SamlStoreConfig",
    "ScimClientConfig",
    "ScimSettings",
    "Secret",
    "ServerSettings",
    "SessionSettings",
    "Settings",
    "Strict",
    "TokenSettings",
    "Weekday",
    "WorkloadAlgorithm",
    "WorkloadIssuerConfig",
    "X509MappingRule",
    "X509StoreConfig",
    "display_database_url",
    "load_settings",
    "read_yaml",
    "reference_problems",
    "resolve_database_url",
    "resolve_secret",
]
