"""Home realm discovery: which identity store signs in the person with a given e-mail address.

Pure: the answer depends only on the address's domain and the configuration (``identity_stores[].domains``,
``discovery.fallback_store``). Nobody is looked up, so the answer cannot reveal whether an address exists:
every address at a domain gets the same store, or the same message.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.errors import InvalidRequest
from broker.settings import Settings

# RFC 5321 section 4.5.3.1: a forward path holds at most 256 octets, so an address at most 254.
MAX_ADDRESS_CHARS = 254


class UnknownDomain(InvalidRequest):
    """No identity store lists the address's domain and there is no fallback store."""


@dataclass(frozen=True)
class Realm:
    """Where an address signs in: the store's name and the domain that decided it (``None``: the fallback)."""

    store: str
    domain: str | None


def domain_of(address: str) -> str:
    """The address's domain, lower-cased and in ASCII (IDNA), or an ``InvalidRequest`` saying what is wrong."""
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if (
        not at
        or not local
        or not domain
        or len(address) > MAX_ADDRESS_CHARS
        or not address.isprintable()
        or any(c.isspace() for c in address)
    ):
        raise InvalidRequest(
            "Enter your work e-mail address, such as name@example.com.", reason="discovery.address_invalid"
        )
    try:
        ascii_domain = domain.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidRequest(
            "The part after @ is not a domain name. Check the address.", reason="discovery.address_invalid"
        ) from None
    if not ascii_domain or "." not in ascii_domain:
        raise InvalidRequest(
            "The part after @ is not a domain name. Check the address.", reason="discovery.address_invalid"
        )
    return ascii_domain


class Discovery:
    """The domain table, built once from the settings (validated there: each domain belongs to one store)."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.discovery.enabled
        self.fallback = settings.discovery.fallback_store
        self._exact: dict[str, str] = {}
        self._suffixes: list[tuple[str, str]] = []
        for store in settings.identity_stores:
            for domain in getattr(store, "domains", []):
                if domain.startswith("*."):
                    self._suffixes.append((domain[1:], store.name))
                else:
                    self._exact[domain] = store.name
        # The longest suffix wins: *.eu.example.com before *.example.com.
        self._suffixes.sort(key=lambda item: len(item[0]), reverse=True)

    def realm(self, address: str) -> Realm:
        """The store for this address; ``UnknownDomain`` when none owns it and there is no fallback."""
        domain = domain_of(address)
        store = self._exact.get(domain)
        if store is None:
            store = next((name for suffix, name in self._suffixes if domain.endswith(suffix)), None)
        if store is not None:
            return Realm(store, domain)
        if self.fallback is not None:
            return Realm(self.fallback, None)
        raise UnknownDomain(
            f"Sign-in for addresses at {domain} is not set up on this broker. Check the address for typos, "
            "or choose how to sign in from the list.",
            reason="discovery.domain_unknown",
        )
