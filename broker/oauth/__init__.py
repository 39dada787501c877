"""The broker as an OAuth 2.0 authorization server for services.

- ``grants``: the token endpoint's grant registry (one module per grant type, RFC 6749 section 4);
- ``token_exchange``: RFC 8693 token exchange, for broker access tokens or AWS credentials;
- ``workload``: verifying workload JWTs from trusted issuers (RFC 7519, RFC 8725);
- ``clients``: client authentication, ``client_secret_basic`` and ``private_key_jwt`` (RFC 7523);
- ``tokens``: the broker's signing keys, their rotation, the JWKS and RFC 9068 access tokens.
"""
