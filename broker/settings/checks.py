"""Checks across sections, each reported with the YAML path of the value at fault.

They work on plain data (the YAML mapping, or a validated ``Settings`` dumped to JSON types), so that
``load_settings`` can run them beside pydantic's field errors in the same pass: a malformed field elsewhere
must not hide a cross-check problem until the next run. Values may therefore be of any type here; a value of
the wrong shape is skipped (its field error is reported by pydantic).
"""

from __future__ import annotations

from typing import Any

from broker.settings.base import email_domains

Problem = tuple[str, str]


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _items(items: Any) -> list[tuple[int, dict[str, Any]]]:
    """The mappings of a list with their indexes (the indexes of the YAML list, for the paths)."""
    if not isinstance(items, list):
        return []
    return [(index, item) for index, item in enumerate(items) if isinstance(item, dict)]


def _strings(items: Any) -> list[tuple[int, str]]:
    if not isinstance(items, list):
        return []
    return [(index, item) for index, item in enumerate(items) if isinstance(item, str)]


def _duplicates(section: str, items: list[tuple[int, dict[str, Any]]], key: str) -> list[Problem]:
    first: dict[Any, int] = {}
    problems = []
    for index, item in items:
        value = item.get(key)
        if not isinstance(value, str):
            continue
        if value in first:
            problems.append((f"{section}[{index}].{key}", f"{value!r} is already used by {section}[{first[value]}]"))
        first.setdefault(value, index)
    return problems


def reference_problems(data: dict[str, Any]) -> list[Problem]:
    """Every cross-section problem of ``data``, as (YAML path, problem)."""
    return [
        *_name_problems(data),
        *_grant_problems(data),
        *_duplicates("roles", _items(data.get("roles")), "name"),
        *_transport_problems(data),
        *_discovery_problems(data),
        *_scim_problems(data),
    ]


def _name_problems(data: dict[str, Any]) -> list[Problem]:
    """Store and issuer names are unique; the broker never trusts its own tokens as workload tokens."""
    stores = _items(data.get("identity_stores"))
    issuers = _items(_section(data, "oauth").get("workload_issuers"))
    problems = _duplicates("identity_stores", stores, "name")
    store_names = {store.get("name") for _, store in stores}
    public_url = _public_url(data)
    for index, issuer in issuers:
        if issuer.get("name") in store_names:
            problems.append(
                (
                    f"oauth.workload_issuers[{index}].name",
                    f"{issuer['name']!r} is also an identity store's name; "
                    "names must differ from identity_stores names",
                )
            )
        if issuer.get("issuer") == public_url:
            # The broker's own tokens must never come back as workload tokens (token-type confusion).
            problems.append(
                (f"oauth.workload_issuers[{index}].issuer", "the broker's own public_url cannot be a workload issuer")
            )
    return problems


def _grant_problems(data: dict[str, Any]) -> list[Problem]:
    """Grant rules of roles and audiences name identity stores or workload issuers that exist."""
    oauth = _section(data, "oauth")
    known = {store.get("name") for _, store in _items(data.get("identity_stores"))}
    known |= {issuer.get("name") for _, issuer in _items(oauth.get("workload_issuers"))}
    problems = []
    for section, items in (("roles", data.get("roles")), ("oauth.audiences", oauth.get("audiences"))):
        for index, item in _items(items):
            for number, rule in _items(item.get("grant")):
                for position, store in _strings(rule.get("stores")):
                    if store not in known:
                        path = f"{section}[{index}].grant[{number}].stores[{position}]"
                        problems.append((path, f"unknown identity store {store!r}"))
    return problems


def _transport_problems(data: dict[str, Any]) -> list[Problem]:
    """HTTPS outside dev mode, TLS where client certificates or passwords travel, STS-compatible tokens."""
    problems = []
    dev = data.get("mode", "production") == "dev"
    secure_cookies = _section(data, "session").get("cookie_secure", True) is not False
    if not dev and not _public_url(data).startswith("https://") and secure_cookies:
        problems.append(("public_url", "must be https:// when session.cookie_secure is true"))
    tokens = _section(_section(data, "oauth"), "tokens")
    if _section(data, "aws").get("mode") == "web_identity" and tokens.get("algorithm", "ES256") != "ES256":
        problems.append(("aws.mode", "web_identity needs oauth.tokens.algorithm ES256 (STS does not accept EdDSA)"))
    if _section(data, "devices").get("tls_client_ca_file") and not _section(data, "server").get("tls_cert_file"):
        problems.append(
            ("devices.tls_client_ca_file", "needs server.tls_cert_file and tls_key_file (TLS at the broker)")
        )
    for index, store in _items(data.get("identity_stores")):
        url = store.get("url")
        if dev or store.get("type") != "ldap" or not isinstance(url, str):
            continue
        if url.startswith("ldap://") and store.get("start_tls") is not True:
            problems.append(
                (
                    f"identity_stores[{index}].url",
                    f"{url.rstrip('/')} sends passwords in clear text; use ldaps:// or start_tls: true "
                    "(plain ldap:// only in dev mode)",
                )
            )
    return problems


def _discovery_problems(data: dict[str, Any]) -> list[Problem]:
    """Home realm discovery: each domain owned by one store, a usable fallback, something to discover."""
    problems = []
    stores = _items(data.get("identity_stores"))
    owners: dict[str, str] = {}
    for index, store in stores:
        name = str(store.get("name"))
        for position, domain in _strings(store.get("domains")):
            try:
                [normalized] = email_domains([domain])
            except ValueError:
                continue
            if normalized in owners and owners[normalized] != name:
                problems.append(
                    (
                        f"identity_stores[{index}].domains[{position}]",
                        f"domain {normalized} is listed by {owners[normalized]} and {name}",
                    )
                )
            owners.setdefault(normalized, name)
    discovery = _section(data, "discovery")
    fallback = discovery.get("fallback_store")
    if fallback is not None:
        target = next((store for _, store in stores if store.get("name") == fallback), None)
        if target is None:
            problems.append(("discovery.fallback_store", f"unknown identity store {fallback!r}"))
        elif target.get("type", "local") == "local":
            problems.append(("discovery.fallback_store", "break-glass accounts cannot be the fallback"))
    if discovery.get("enabled") is True and not owners and fallback is None:
        problems.append(("discovery.enabled", "list domains on an identity store (or set fallback_store)"))
    return problems


def _scim_problems(data: dict[str, Any]) -> list[Problem]:
    """Each SCIM client provisions an identity store that exists."""
    names = {store.get("name") for _, store in _items(data.get("identity_stores"))}
    return [
        (f"scim.clients[{index}].store", f"unknown identity store {client['store']!r}")
        for index, client in _items(_section(data, "scim").get("clients"))
        if isinstance(client.get("store"), str) and client["store"] not in names
    ]


def _public_url(data: dict[str, Any]) -> str:
    return str(data.get("public_url") or "http://127.0.0.1:8000").rstrip("/")
