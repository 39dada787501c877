"""The broker's authorization server, assembled: token endpoint, grants, keys, and its RFC 8414 metadata."""

from __future__ import annotations

from typing import Any

from broker.audit import AuditTrail
from broker.context import Clock
from broker.devices import Devices
from broker.http import HttpClient, HttpPolicy
from broker.issuance import Issuance
from broker.keys import Keys
from broker.oauth.authorization_code import AUTHORIZE_PATH, AuthorizationCodeGrant, AuthorizationFlow
from broker.oauth.clients import CLIENT_ASSERTION_TYPE, ClientAuthenticator
from broker.oauth.device import DeviceCodeGrant, DeviceFlow
from broker.oauth.grants import Grant, Limits, TokenEndpoint
from broker.oauth.jwt_bearer import JwtBearerGrant
from broker.oauth.refresh import CliDeps, CliSessions, RefreshTokenGrant
from broker.oauth.token_exchange import TOKEN_TYPE_AWS_CREDENTIALS, TokenExchangeGrant
from broker.oauth.tokens import TokenService
from broker.oauth.workload import TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT, WorkloadVerifier
from broker.settings import Settings
from broker.store.db import Database

TOKEN_PATH = "/oauth2/token"  # noqa: S105 (a path, not a secret)
JWKS_PATH = "/jwks.json"
DEVICE_AUTHORIZATION_PATH = "/oauth2/device_authorization"
REVOCATION_PATH = "/oauth2/revoke"


class OAuthServer:
    """Everything the OAuth routes need, built once by the composition root (``broker.services``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        audit: AuditTrail,
        keys: Keys,
        clock: Clock,
        issuance: Issuance,
        tokens: TokenService,
        limits: Limits | None = None,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.issuer = settings.public_url
        self.token_endpoint_url = settings.public_url + TOKEN_PATH
        # One HTTP client for key and CRL fetches: no redirects, no proxy variables, short timeouts per request.
        self.http = HttpClient(HttpPolicy(peer="key_fetch"))
        self.verifier = WorkloadVerifier(settings.oauth.workload_issuers, http=self.http, clock=clock)
        clients = ClientAuthenticator(
            settings.oauth,
            audiences=(self.token_endpoint_url, self.issuer),
            http=self.http,
            clock=clock,
        )
        # The credential helper (public client broker-cli): device code, loopback code + PKCE, refresh.
        cli = CliDeps(config=settings.oauth.cli, issuer=self.issuer, db=db, audit=audit, keys=keys, clock=clock)
        self.cli = CliSessions(tokens, **cli)
        self.device = DeviceFlow(self.cli, **cli)
        self.authorization = AuthorizationFlow(self.cli, **cli)
        grants: list[Grant] = [
            TokenExchangeGrant(
                settings,
                db=db,
                audit=audit,
                keys=keys,
                clock=clock,
                issue=issuance.issue,
                verifier=self.verifier,
                tokens=tokens,
            )
        ]
        # Devices with a certificate (type: x509 stores): RFC 7523 assertions here, mutual TLS in web/devices.py.
        self.devices = Devices(
            settings,
            db=db,
            audit=audit,
            clock=clock,
            issue=issuance.issue,
            active_grants=issuance.active_grants,
            http=self.http,
        )
        if self.devices.enabled:
            grants.append(
                JwtBearerGrant(
                    self.devices, db=db, keys=keys, clock=clock, audiences=(self.token_endpoint_url, self.issuer)
                )
            )
        if settings.oauth.cli.enabled:
            grants += [
                DeviceCodeGrant(self.cli, **cli),
                AuthorizationCodeGrant(self.cli, **cli),
                RefreshTokenGrant(self.cli),
            ]
        self.endpoint = TokenEndpoint(
            db=db,
            audit=audit,
            keys=keys,
            clients=clients,
            grants=grants,
            clock=clock,
            limits=limits,
        )

    def close(self) -> None:
        self.http.close()

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 authorization server metadata, also served as OpenID Provider metadata (the parts AWS IAM
        and other relying parties read: ``issuer`` and ``jwks_uri``). The authorization, device authorization
        (RFC 8628 section 4) and revocation (RFC 7009) endpoints serve the credential helper only.
        """
        alg = self.settings.oauth.tokens.algorithm
        cli: dict[str, Any] = {}
        if self.settings.oauth.cli.enabled:
            cli = {
                "authorization_endpoint": self.issuer + AUTHORIZE_PATH,
                "device_authorization_endpoint": self.issuer + DEVICE_AUTHORIZATION_PATH,
                "revocation_endpoint": self.issuer + REVOCATION_PATH,
                "revocation_endpoint_auth_methods_supported": ["none"],
                "code_challenge_methods_supported": ["S256"],
                "authorization_response_iss_parameter_supported": True,
            }
        return {
            **cli,
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint_url,
            "jwks_uri": self.issuer + JWKS_PATH,
            "grant_types_supported": self.endpoint.grant_types,
            "response_types_supported": ["code"] if cli else [],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt", "none"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
            "client_assertion_types_supported": [CLIENT_ASSERTION_TYPE],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [alg],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope", "act"],
            "subject_token_types_supported": [TOKEN_TYPE_JWT, TOKEN_TYPE_ACCESS_TOKEN],
            "requested_token_types_supported": [TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_AWS_CREDENTIALS],
        }
