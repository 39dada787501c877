"""LDAP directories as an identity store (RFC 4511 operations, RFC 4513 simple bind, RFC 4515 filters).

The only user of python-ldap (OpenLDAP's libldap). A sign-in is:

1. refuse an empty password before any network traffic: a simple bind with a DN and no password is an
   *unauthenticated* bind (RFC 4513 section 5.1.2) that many servers answer with success;
2. bind with the service account and search ``user_base_dn`` for exactly one entry matching
   ``(&<user_filter>(|(<attr>=<typed name>)...))``, the typed name escaped (RFC 4515 section 3), so ``*``,
   ``(``, ``)``, ``\\`` and NUL match themselves; aliases are never dereferenced and referrals never chased;
3. check that the entry's DN lies under ``user_base_dn`` (compared as parsed DNs, not as strings);
4. bind as that DN with the typed password on a second connection, which is then closed;
5. read groups (``memberOf`` or a group search, optionally nested) with the service connection.

Every connection sets TLS certificate verification to *demand* with its own TLS context, a connect timeout
and an operation timeout, so a dead, slow or impersonated directory fails in bounded time as
:class:`~broker.errors.ServiceUnavailable` (503 with Retry-After). A directory carries no MFA evidence:
the identity's level is ``none`` and roles that need more get it from the broker's own factors.
"""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import ldap
import ldap.dn
import ldap.filter

from broker.connectors.base import PasswordLogin
from broker.errors import AuthenticationFailed, BrokerError, ServiceUnavailable
from broker.identity import Identity, MfaEvidence, MfaLevel
from broker.settings import LdapStoreConfig

# What a person may type as a username: long enough for any e-mail address, short enough to keep filters
# and audit rows small.
MAX_USERNAME_CHARS = 256
# Passwords beyond this are not passwords (directories cap them far lower).
MAX_PASSWORD_CHARS = 1024
# Seconds a client is told to wait before retrying when the directory is unreachable.
RETRY_AFTER_SECONDS = 30


def _refuse(reason: str, message: str | None = None) -> AuthenticationFailed:
    return AuthenticationFailed(message, reason=f"ldap.{reason}")


class DirectoryUnavailable(ServiceUnavailable):
    """The directory did not answer in time, refused the connection, or failed TLS verification.

    ``detail`` says at which step and what libldap reported, for the audit event (never shown to the person).
    """

    def __init__(self, message: str, *, reason: str, detail: dict[str, str]) -> None:
        super().__init__(message, reason=reason, retry_after=RETRY_AFTER_SECONDS)
        self.detail = detail


def audit_name(username: str) -> str | None:
    """What the person typed, for the audit trail: control characters (NUL above all, which PostgreSQL text
    cannot hold) shown as U+FFFD, capped; None when nothing was typed."""
    shown = "".join(c if c.isprintable() else "\ufffd" for c in username[:MAX_USERNAME_CHARS])
    return shown or None


def parse_dn(value: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    """A DN as comparable RDNs: attribute types and values lower-cased (caseIgnoreMatch, the usual rule)."""
    return tuple(tuple(sorted((attr.lower(), val.lower()) for attr, val, _ in rdn)) for rdn in ldap.dn.str2dn(value))


def within(dn: str, base: str) -> bool:
    """True when ``dn`` is ``base`` or below it. Malformed DNs are never within anything."""
    try:
        entry, root = parse_dn(dn), parse_dn(base)
    except ldap.DECODING_ERROR:
        return False
    return len(entry) >= len(root) and entry[len(entry) - len(root) :] == root


def user_search_filter(config: LdapStoreConfig, username: str) -> str:
    """``(&<user_filter>(|(uid=<escaped>)(mail=<escaped>)))``: the typed name can only ever be a value."""
    value = ldap.filter.escape_filter_chars(username, escape_mode=1)
    alternatives = "".join(f"({attr}={value})" for attr in config.login_attributes)
    return f"(&{config.user_filter}(|{alternatives}))"


def _text(value: bytes, attribute: str) -> str:
    """An attribute value as text; AD's binary ``objectGUID`` as its canonical UUID form."""
    if attribute.lower() == "objectguid" and len(value) == 16:
        return str(uuid.UUID(bytes_le=value))
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.hex()


def _first(entry: dict[str, list[bytes]], attribute: str | None) -> str | None:
    if attribute is None:
        return None
    for name, values in entry.items():
        if name.lower() == attribute.lower() and values:
            return _text(values[0], attribute)
    return None


def _all(entry: dict[str, list[bytes]], attribute: str) -> list[str]:
    for name, values in entry.items():
        if name.lower() == attribute.lower():
            return [_text(v, attribute) for v in values]
    return []


def _rdn_value(dn: str) -> str | None:
    try:
        parsed = ldap.dn.str2dn(dn)
    except ldap.DECODING_ERROR:
        return None
    return str(parsed[0][0][1]) if parsed and parsed[0] else None


class LdapConnector:
    """One directory. Thread-safe: every sign-in opens its own connections and closes them."""

    kind = "ldap"

    def __init__(self, config: LdapStoreConfig) -> None:
        self.config = config
        # The identity's issuer: the directory and the subtree its people live in (an RFC 4516 LDAP URL).
        self.issuer = f"{config.url}/{config.user_base_dn}"

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def display_name(self) -> str:
        return self.config.display_name

    @property
    def audit_detail(self) -> Mapping[str, object]:
        return {"protocol": "ldap"}

    def account_key(self, username: str) -> str:
        return username.strip().casefold()

    def audit_principal(self, username: str) -> str | None:
        return audit_name(username)

    def login(self, username: str, password: str, otp: str, *, now: float) -> PasswordLogin:
        """:meth:`authenticate` (a directory holds no second factor: ``otp`` is not used). The session's MFA
        level is ``none``: roles that need more ask for the broker's own factors (``/mfa/verify``)."""
        return PasswordLogin(self.authenticate(username, password, now=now))

    @property
    def start_path(self) -> str:
        """The sign-in form for this directory (the sign-in page links to it)."""
        return f"/login/ldap/{self.name}"

    @property
    def takes_addresses(self) -> bool:
        """People may type their e-mail address (``mail`` or AD's ``userPrincipalName`` is a login attribute)."""
        return any(a.lower() in ("mail", "userprincipalname") for a in self.config.login_attributes)

    @property
    def username_label(self) -> str:
        if not self.takes_addresses:
            return "Username"
        if len(self.config.login_attributes) == 1:
            return "E-mail address"
        return "Username or e-mail address"

    # ------------------------------------------------------------ connections

    def _unavailable(self, exc: ldap.LDAPError, stage: str, *, tls_step: bool = False) -> DirectoryUnavailable:
        """A connection or operation failure as a 503; ``tls_step`` marks failures of StartTLS itself."""
        info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        text = f"{info.get('desc', '')} {info.get('info', '')}".lower()
        if isinstance(exc, ldap.TIMEOUT) or "timed out" in text:
            reason = "ldap.timeout"
        elif (
            # StartTLS: the LDAP exchange worked, so a "connect error" is the handshake's.
            (tls_step and isinstance(exc, ldap.CONNECT_ERROR))
            # LDAPS: libldap says "can't contact" for a refused connection and a refused certificate alike.
            or (isinstance(exc, ldap.SERVER_DOWN) and self.config.url.startswith("ldaps://") and self._speaks_tls())
        ):
            reason = "ldap.tls_failed"
        else:
            reason = "ldap.unavailable"
        return DirectoryUnavailable(
            f"{self.config.display_name} is not answering right now, so nobody can sign in with it. "
            "Try again in a minute; if it keeps happening, tell your administrator.",
            reason=reason,
            detail={"stage": stage, "ldap_error": type(exc).__name__, "ldap_info": str(info.get("info", ""))[:200]},
        )

    def _speaks_tls(self) -> bool:
        """Diagnosis only, after a failed LDAPS connection: does the server complete a TLS handshake when
        nothing is checked? Then it is up, and its certificate is what failed. Nothing is sent over it."""
        parts = urlsplit(self.config.url)
        host = parts.hostname or ""
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.check_hostname = False
        probe.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection((host, parts.port or 636), timeout=self.config.connect_timeout_seconds) as raw,
                probe.wrap_socket(raw, server_hostname=host),
            ):
                return True
        except (OSError, ValueError):
            return False

    @contextmanager
    def _connection(self, stage: str) -> Iterator[Any]:
        """A connection with verified TLS (when configured) and bounded waits, closed on the way out."""
        config = self.config
        try:
            conn = ldap.initialize(config.url)
            conn.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
            conn.set_option(ldap.OPT_REFERRALS, 0)
            conn.set_option(ldap.OPT_DEREF, ldap.DEREF_NEVER)
            conn.set_option(ldap.OPT_NETWORK_TIMEOUT, config.connect_timeout_seconds)
            # Asynchronous connect: libldap then bounds the TLS handshake by the network timeout too (a
            # blocking connect would wait for a silent server's handshake forever).
            conn.set_option(ldap.OPT_CONNECT_ASYNC, ldap.OPT_ON)
            conn.set_option(ldap.OPT_TIMEOUT, config.timeout_seconds)
            conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
            conn.set_option(ldap.OPT_X_TLS_PROTOCOL_MIN, ldap.OPT_X_TLS_PROTOCOL_TLS1_2)
            if config.ca_file is not None:
                conn.set_option(ldap.OPT_X_TLS_CACERTFILE, str(config.ca_file))
            # A fresh TLS context for this connection, so the options above apply (set last, by libldap's rule).
            conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
            # python-ldap's own wait on each synchronous call.
            conn.timeout = config.timeout_seconds
        except ldap.LDAPError as exc:
            raise self._unavailable(exc, stage) from None
        if config.start_tls:
            try:
                conn.start_tls_s()
            except ldap.LDAPError as exc:
                with suppress(ldap.LDAPError):
                    conn.unbind_s()
                raise self._unavailable(exc, f"{stage}.start_tls", tls_step=True) from None
        try:
            yield conn
        finally:
            with suppress(ldap.LDAPError):
                conn.unbind_s()

    # ------------------------------------------------------------ sign-in

    def authenticate(self, username: str, password: str, *, now: float | None = None) -> Identity:
        """Find the person, bind as them, read their groups; raise an error whose ``reason`` says what failed."""
        now = time.time() if now is None else now
        if not username.strip() or len(username) > MAX_USERNAME_CHARS or not username.isprintable():
            # Names never hold control characters; a NUL in particular is an attempt to cut a C string short.
            raise _refuse("username_invalid", "Enter your username.")
        if password == "":
            # RFC 4513 section 5.1.2: a DN with an empty password is an unauthenticated bind, which many
            # directories answer with success. Refused here, before any traffic.
            raise _refuse("password_empty", "Enter your password.")
        if len(password) > MAX_PASSWORD_CHARS:
            raise _refuse("password_invalid")
        config = self.config
        with self._connection("service_bind") as service:
            try:
                service.simple_bind_s(config.bind_dn, config.bind_password.get_secret_value())
            except ldap.INVALID_CREDENTIALS:
                raise ServiceUnavailable(
                    f"{config.display_name} refused the broker's service account. Tell your administrator.",
                    reason="ldap.service_bind_failed",
                    retry_after=RETRY_AFTER_SECONDS,
                ) from None
            except ldap.LDAPError as exc:
                raise self._unavailable(exc, "service_bind") from None
            dn, entry = self._find(service, username)
            self._bind_as(dn, password)
            groups = self._groups(service, dn, entry)
        subject = _first(entry, config.attributes.subject)
        if not subject:
            raise _refuse("subject_missing", "Your directory entry lacks an identifier. Tell your administrator.")
        extra = {name: value for name in config.attributes.extra if (value := _first(entry, name)) is not None}
        found_username = _first(entry, config.attributes.username) or username
        email = _first(entry, config.attributes.email)
        if any("\x00" in value for value in (subject, found_username, email or "", *groups, *extra.values())):
            # Stored verbatim elsewhere (sessions, audit); PostgreSQL text cannot hold NUL, so fail here, clearly.
            raise _refuse("attributes_invalid", "Your directory entry has a value the broker cannot use.")
        return Identity(
            subject=subject,
            issuer=self.issuer,
            store=self.name,
            username=found_username,
            email=email,
            groups=frozenset(groups),
            attributes={**extra, "ldap_dn": dn},
            mfa=MfaEvidence(level=MfaLevel.NONE, methods=("pwd",), authenticated_at=datetime.fromtimestamp(now, UTC)),
        )

    def _search(
        self,
        conn: Any,
        base: str,
        scope: int,
        query: str,
        attributes: Sequence[str],
        *,
        limit: int,
        stage: str,
        too_many: str,
    ) -> list[tuple[str, dict[str, list[bytes]]]]:
        try:
            found = conn.search_ext_s(
                base, scope, query, list(attributes), sizelimit=limit, timeout=self.config.timeout_seconds
            )
        except ldap.SIZELIMIT_EXCEEDED:
            raise _refuse(too_many) from None
        except ldap.NO_SUCH_OBJECT:
            return []
        except (ldap.FILTER_ERROR, ldap.INVALID_DN_SYNTAX) as exc:
            raise BrokerError(
                f"{self.config.display_name} is misconfigured (a filter or base DN is not valid). "
                "Tell your administrator.",
                reason="ldap.config_invalid",
            ) from exc
        except ldap.LDAPError as exc:
            raise self._unavailable(exc, stage) from None
        # Search result references (dn None) are never followed.
        return [(dn, attrs) for dn, attrs in found if dn is not None]

    def _find(self, service: Any, username: str) -> tuple[str, dict[str, list[bytes]]]:
        config = self.config
        attributes = {
            config.attributes.username,
            config.attributes.subject,
            *([config.attributes.email] if config.attributes.email else []),
            *config.attributes.extra,
            *([config.groups.member_of_attribute] if config.groups.source == "member_of" else []),
        }
        found = self._search(
            service,
            config.user_base_dn,
            ldap.SCOPE_SUBTREE,
            user_search_filter(config, username),
            sorted(attributes),
            limit=2,
            stage="user_search",
            too_many="user_ambiguous",
        )
        if not found:
            raise _refuse("user_not_found")
        if len(found) > 1:
            raise _refuse("user_ambiguous")
        dn, entry = found[0]
        if not within(dn, config.user_base_dn):
            raise _refuse("user_outside_base")
        return dn, entry

    def _bind_as(self, dn: str, password: str) -> None:
        with self._connection("user_bind") as conn:
            try:
                conn.simple_bind_s(dn, password)
            except ldap.INVALID_CREDENTIALS:
                raise _refuse("password_invalid") from None
            except (ldap.UNWILLING_TO_PERFORM, ldap.INAPPROPRIATE_AUTH, ldap.CONSTRAINT_VIOLATION):
                # Account disabled, locked or expired by the directory's own password policy.
                raise _refuse("bind_refused") from None
            except ldap.LDAPError as exc:
                raise self._unavailable(exc, "user_bind") from None

    def _groups(self, service: Any, dn: str, entry: dict[str, list[bytes]]) -> set[str]:
        """Group names, walking up nested groups breadth-first when configured (each group once: no cycles)."""
        settings = self.config.groups
        if settings.source == "none":
            return set()
        names: set[str] = set()
        seen: set[str] = set()
        # Each level: (group DN, name) pairs; the next level are the groups these groups belong to.
        level = self._direct_groups(service, dn, entry)
        for depth in range(settings.max_depth):
            fresh = [(group_dn, name) for group_dn, name in level if group_dn.lower() not in seen]
            seen.update(group_dn.lower() for group_dn, _ in fresh)
            names.update(name for _, name in fresh if name)
            if len(names) > settings.max_groups:
                raise _refuse("too_many_groups", "You are in more groups than the broker accepts. Ask an admin.")
            if not settings.nested or depth + 1 == settings.max_depth or not fresh:
                break
            level = [parent for group_dn, _ in fresh for parent in self._parent_groups(service, group_dn)]
        return names

    def _direct_groups(self, service: Any, dn: str, entry: dict[str, list[bytes]]) -> list[tuple[str, str | None]]:
        settings = self.config.groups
        if settings.source == "member_of":
            return self._named(_all(entry, settings.member_of_attribute))
        return self._search_groups(service, dn)

    def _parent_groups(self, service: Any, group_dn: str) -> list[tuple[str, str | None]]:
        settings = self.config.groups
        if settings.source == "member_of":
            return self._named(self._member_of(service, group_dn))
        return self._search_groups(service, group_dn)

    def _named(self, group_dns: list[str]) -> list[tuple[str, str | None]]:
        """memberOf values as (DN, name); groups outside ``groups.base_dn`` (when set) are ignored."""
        base = self.config.groups.base_dn
        return [(g, _rdn_value(g)) for g in group_dns if base is None or within(g, base)]

    def _search_groups(self, service: Any, member_dn: str) -> list[tuple[str, str | None]]:
        settings = self.config.groups
        assert settings.base_dn is not None
        value = ldap.filter.escape_filter_chars(member_dn, escape_mode=1)
        found = self._search(
            service,
            settings.base_dn,
            ldap.SCOPE_SUBTREE,
            f"(&{settings.filter}({settings.member_attribute}={value}))",
            [settings.name_attribute],
            limit=settings.max_groups + 1,
            stage="group_search",
            too_many="too_many_groups",
        )
        return [(group_dn, _first(attrs, settings.name_attribute)) for group_dn, attrs in found]

    def _member_of(self, service: Any, group_dn: str) -> list[str]:
        found = self._search(
            service,
            group_dn,
            ldap.SCOPE_BASE,
            "(objectClass=*)",
            [self.config.groups.member_of_attribute],
            limit=1,
            stage="group_search",
            too_many="too_many_groups",
        )
        return _all(found[0][1], self.config.groups.member_of_attribute) if found else []
