"""The broker's own signing keys, their rotation, the published JWKS, and the tokens the broker signs.

- Access tokens follow RFC 9068 (JWT profile for OAuth 2.0 access tokens): header ``typ: at+jwt``, claims
  ``iss``, ``sub``, ``aud``, ``exp``, ``iat``, ``jti``, ``client_id``, optional ``scope`` and ``act``
  (RFC 8693 section 4.1).
- Web-identity tokens are what the broker hands to STS ``AssumeRoleWithWebIdentity`` when ``aws.mode`` is
  ``web_identity``: AWS IAM trusts the broker as an OIDC provider, so the broker needs no AWS key at all.
- Keys (ES256 on P-256, or EdDSA on Ed25519) live in the ``signing_keys`` table with the private half
  encrypted by AES-256-GCM (``broker.encryption``) under a key derived from the newest root secret, whose id
  is recorded in ``key_id``; any listed root secret decrypts (``broker keys re-encrypt`` moves them). A new
  key is made every ``rotation_period_hours``; the previous one stops signing at once but stays in the JWKS
  until every token it may have signed has expired (RFC 7517 section 5 leaves the set's contents to the
  issuer).
- ``broker signing-keys rotate`` rotates now (:meth:`TokenService.rotate_now`); with ``--revoke`` the old key
  leaves the JWKS at once and the broker refuses its tokens at once (each verification asks the key table).
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from broker import jose
from broker.audit import AuditTrail
from broker.context import Clock, Context, utcnow
from broker.encryption import Cipher, Undecryptable
from broker.errors import InvalidRequest, ServiceUnavailable
from broker.keys import Keys
from broker.settings import Settings
from broker.store import queries
from broker.store.db import Database
from broker.store.models import SigningKey

if TYPE_CHECKING:
    from broker.aws.sts import AssumeRoleRequest

ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105
# Tokens may be checked by hosts whose clocks differ a little; keep keys published that much longer.
CLOCK_SKEW_SECONDS = 60
# Every key the broker has made signs with one of these; a token under any other ``alg`` is not its own.
ALGORITHMS = ("ES256", "EdDSA")
UNDECRYPTABLE_MESSAGE = (
    "The broker's signing key cannot be decrypted with the configured secret keys. Run `broker keys status` "
    'and list the key it names again in secret_keys (docs/operations.md, "Rotating secret_key").'
)
# AWS reads these claims of a web identity token (IAM User Guide, "Passing session tags using
# AssumeRoleWithWebIdentity" and "Monitor and control actions taken with assumed roles").
AWS_SOURCE_IDENTITY_CLAIM = "https://aws.amazon.com/source_identity"
AWS_TAGS_CLAIM = "https://aws.amazon.com/tags"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    issued_at: datetime
    expires_at: datetime
    kid: str

    @property
    def expires_in(self) -> int:
        return int((self.expires_at - self.issued_at).total_seconds())


@dataclass(frozen=True)
class _Loaded:
    """The current signing key and the published public keys, as cached by one process."""

    kid: str
    alg: str
    private: jose.PrivateKey
    created_at: datetime
    public: jose.JwksCache
    public_jwks: dict[str, Any]
    loaded_at: datetime


@dataclass(frozen=True)
class Rotation:
    """What ``rotate_now`` did: the new signing key, and until when the old one stays published."""

    new_kid: str
    old_kid: str | None
    revoked: bool
    old_published_until: datetime | None


@dataclass(frozen=True)
class KeyState:
    """One stored signing key as ``broker signing-keys list`` shows it."""

    kid: str
    alg: str
    state: str  # current, retired (still published), revoked, expired (awaiting deletion)
    created_at: datetime
    publish_until: datetime | None


def signing_key_cipher(keys: Keys) -> Cipher:
    """The cipher of signing keys at rest: one AES key per root secret, named by the root's id."""
    return Cipher(keys.keys("signing-key-encryption"))


def open_signing_key(cipher: Cipher, row: SigningKey) -> tuple[str, bytes]:
    """``(root key id, private JWK bytes)``; :class:`Undecryptable` when no listed root secret opens it."""
    return cipher.open(row.private_jwk_encrypted, aad=row.kid.encode(), key_id=row.key_id)


class TokenService:
    """Signs the broker's tokens; one per process, shared by every request (thread-safe)."""

    def __init__(self, settings: Settings, *, db: Database, keys: Keys, clock: Clock = utcnow) -> None:
        self.settings = settings
        self.config = settings.oauth.tokens
        self.issuer = settings.public_url
        self.db = db
        self.clock = clock
        self.cipher = signing_key_cipher(keys)
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        if self.config.algorithm == "EdDSA":
            jose.allow_eddsa()

    # ------------------------------------------------------------ keys

    @property
    def max_token_lifetime(self) -> timedelta:
        """The longest any token signed by a key can live: how long a retired key must stay published."""
        ttls = [self.config.access_token_ttl_seconds, self.config.web_identity_ttl_seconds]
        ttls += [a.ttl_seconds for a in self.settings.oauth.audiences if a.ttl_seconds]
        # A process may keep signing with a retired key until it re-reads the key table.
        return timedelta(seconds=max(ttls) + self.config.key_cache_seconds + CLOCK_SKEW_SECONDS)

    def _encrypt(self, kid: str, private_jwk: dict[str, Any]) -> tuple[str, str]:
        """``(root key id, bare body)``: the body stays readable by a release that predates key ids."""
        return self.cipher.seal_body(json.dumps(private_jwk).encode(), aad=kid.encode())

    def _decrypt(self, row: SigningKey) -> jose.PrivateKey:
        try:
            _, plain = open_signing_key(self.cipher, row)
        except Undecryptable:
            raise ServiceUnavailable(UNDECRYPTABLE_MESSAGE, reason="signing_key_undecryptable") from None
        return jose.load_jwk(json.loads(plain))

    def _new_key(self, generation: int, now: datetime) -> SigningKey:
        alg = self.config.algorithm
        private = jose.generate_key(alg)
        kid = jose.key_id(private)
        public = jose.public_jwk(private, alg)
        key_id, sealed = self._encrypt(kid, jose.private_jwk(private))
        return SigningKey(
            kid=kid,
            generation=generation,
            alg=alg,
            public_jwk=public,
            private_jwk_encrypted=sealed,
            key_id=key_id,
            created_at=now,
        )

    def _due(self, row: SigningKey | None, now: datetime, *, force: bool = False) -> bool:
        if row is None or force or row.retired_at is not None or row.alg != self.config.algorithm:
            return True
        return row.created_at + timedelta(hours=self.config.rotation_period_hours) <= now

    def rotate(self, *, force: bool = False) -> str:
        """Make a new current key if one is due (or ``force``); retire the old one; drop expired keys.

        Returns the current kid. Safe to call from several processes at once: ``generation`` is unique in
        the database, so exactly one new key wins.
        """
        now = self.clock()
        with self.db.transaction() as session:
            latest = queries.latest_signing_key(session)
            if self._due(latest, now, force=force):
                if latest is not None:
                    queries.retire_signing_key(
                        session, kid=latest.kid, retired_at=now, publish_until=now + self.max_token_lifetime
                    )
                generation = latest.generation + 1 if latest else 1
                queries.add_signing_key(session, key=self._new_key(generation, now))
            queries.delete_expired_signing_keys(session, now=now, revoked_before=now - self.max_token_lifetime)
        with self._lock:
            self._loaded = None
        return self._load().kid

    def rotate_now(self, *, revoke: bool, audit: AuditTrail, actor: str, ctx: Context | None = None) -> Rotation:
        """Make a new current key now (after a suspected compromise) and audit it in the same transaction.

        The old key stops signing at once. It stays published until every token it signed has expired, or with
        ``revoke`` leaves the JWKS at once, its private half is deleted and its tokens are refused at once.
        Other processes sign with the new key once they re-read the table (``key_cache_seconds``).
        """
        now = self.clock()
        with self.db.transaction() as session:
            latest = queries.latest_signing_key(session)
            old = latest if latest is not None and latest.retired_at is None else None
            until = None
            if old is not None:
                # A revoked key is unpublished at once (for older releases too, which know no ``revoked_at``);
                # its row stays as long as its tokens could live, so they are refused as revoked.
                until = now if revoke else now + self.max_token_lifetime
                queries.retire_signing_key(session, kid=old.kid, retired_at=now, publish_until=until, revoked=revoke)
            key = self._new_key(latest.generation + 1 if latest else 1, now)
            if not queries.add_signing_key(session, key=key):
                raise ServiceUnavailable(
                    "Another process rotated the signing key at the same moment. Run the command again.",
                    reason="signing_key_rotation_raced",
                )
            queries.delete_expired_signing_keys(session, now=now, revoked_before=now - self.max_token_lifetime)
            audit.append(
                session,
                event="signing_key_rotate",
                outcome="ok",
                reason="revoked" if revoke else "rotated",
                principal=actor,
                store="cli",
                ctx=ctx,
                detail={
                    "new_kid": key.kid,
                    "old_kid": old.kid if old else None,
                    "old_published_until": until.isoformat() if until else None,
                },
            )
        with self._lock:
            self._loaded = None
        published = None if revoke else until
        return Rotation(
            new_kid=key.kid, old_kid=old.kid if old else None, revoked=revoke, old_published_until=published
        )

    def key_states(self) -> list[KeyState]:
        """Every stored key, newest first."""
        now = self.clock()
        with self.db.transaction() as session:
            rows = list(queries.all_signing_keys(session))
        states = []
        for row in rows:
            if row.revoked_at is not None:
                state = "revoked"
            elif row.retired_at is None:
                state = "current"
            elif row.publish_until is not None and row.publish_until > now:
                state = "retired"
            else:
                state = "expired"
            states.append(KeyState(row.kid, row.alg, state, row.created_at, row.publish_until))
        return states

    def _load(self) -> _Loaded:
        now = self.clock()
        loaded = self._loaded
        fresh = loaded is not None and (now - loaded.loaded_at).total_seconds() < self.config.key_cache_seconds
        if loaded is not None and fresh and not self._due_at(loaded, now):
            return loaded
        with self._lock:
            with self.db.transaction() as session:
                rows = list(queries.list_signing_keys(session, now=now))
            current = next((r for r in rows if r.retired_at is None), None)
            if self._due(current, now):
                self._loaded = None
            else:
                assert current is not None
                public = [r.public_jwk for r in rows]
                self._loaded = _Loaded(
                    kid=current.kid,
                    alg=current.alg,
                    private=self._decrypt(current),
                    created_at=current.created_at,
                    public=jose.key_set({"keys": public}),
                    public_jwks={"keys": public},
                    loaded_at=now,
                )
                return self._loaded
        self.rotate()
        loaded = self._loaded
        assert loaded is not None
        return loaded

    def _due_at(self, loaded: _Loaded, now: datetime) -> bool:
        return loaded.created_at + timedelta(hours=self.config.rotation_period_hours) <= now

    def jwks(self) -> dict[str, Any]:
        """The published JWK Set: the current key and every retired key whose tokens may still be live."""
        return self._load().public_jwks

    # ------------------------------------------------------------ signing

    def _sign(self, claims: dict[str, Any], *, typ: str, ttl_seconds: int) -> IssuedToken:
        key = self._load()
        now = self.clock()
        jti = secrets.token_urlsafe(18)
        expires = now + timedelta(seconds=ttl_seconds)
        body = {
            "iss": self.issuer,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": jti,
            **claims,
        }
        header = {"alg": key.alg, "kid": key.kid, "typ": typ}
        token = jose.sign(header, body, key.private)
        return IssuedToken(token=token, jti=jti, issued_at=now, expires_at=expires, kid=key.kid)

    def issue_access_token(
        self,
        *,
        subject: str,
        audience: str,
        client_id: str,
        scope: tuple[str, ...] = (),
        act: dict[str, Any] | None = None,
        ttl_seconds: int | None = None,
        extra_claims: dict[str, Any] | None = None,
    ) -> IssuedToken:
        """An RFC 9068 access token for one internal service (``aud``), short-lived.

        ``extra_claims`` adds private claims (e.g. the CLI sign-in's ``sid``); it cannot replace registered ones.
        """
        claims: dict[str, Any] = {**(extra_claims or {}), "sub": subject, "aud": audience, "client_id": client_id}
        if scope:
            claims["scope"] = " ".join(scope)
        if act:
            claims["act"] = act
        ttl = min(ttl_seconds or self.config.access_token_ttl_seconds, self.config.access_token_ttl_seconds)
        return self._sign(claims, typ=ACCESS_TOKEN_TYP, ttl_seconds=ttl)

    def web_identity_token(self, request: AssumeRoleRequest) -> str:
        """The token the broker presents to STS AssumeRoleWithWebIdentity for one AssumeRole request.

        ``sub`` is the role ARN, so a role's trust policy can require that a token was minted for that very
        role (``<issuer host>:sub``); the workload is carried as SourceIdentity and session tags.
        """
        claims: dict[str, Any] = {
            "sub": request.role_arn,
            "aud": self.config.web_identity_audience,
            AWS_SOURCE_IDENTITY_CLAIM: request.source_identity,
        }
        if request.tags:
            claims[AWS_TAGS_CLAIM] = {
                "principal_tags": {k: [v] for k, v in request.tags.items()},
                "transitive_tag_keys": list(request.transitive_tag_keys),
            }
        return self._sign(claims, typ="JWT", ttl_seconds=self.config.web_identity_ttl_seconds).token

    # ------------------------------------------------------------ verification

    def verify_access_token(self, token: str, *, audience: str) -> dict[str, Any]:
        """Verify a broker access token against the published keys, as an internal service would."""
        key = self._load()
        rules = jose.ClaimRules(issuer=self.issuer, audiences=(audience,), required=("exp",), leeway=CLOCK_SKEW_SECONDS)
        try:
            header, claims = jose.verify(
                token,
                keys=key.public,
                algorithms=ALGORITHMS,
                max_bytes=jose.MAX_COMPACT_BYTES,
                rules=rules,
                now=self.clock().timestamp(),
            )
        except (jose.Refused, jose.ClaimRefused) as exc:
            # Not signed by a key this process publishes: say "revoked" when the key table says so (the kid is
            # read unverified, only to choose the refusal).
            kid = jose.unverified_kid(token)
            if kid is not None and self._key_refusal(kid) == "broker_token_key_revoked":
                raise _revoked() from exc
            raise InvalidRequest(
                "The token is not a valid broker access token.", reason="broker_token_invalid"
            ) from exc
        if header.get("typ") != ACCESS_TOKEN_TYP:
            raise InvalidRequest("The token is not a broker access token.", reason="broker_token_typ")
        # This process may still hold a key another process revoked (``broker signing-keys rotate --revoke``):
        # the key table decides, so a revoked key's tokens are refused at once everywhere.
        refusal = self._key_refusal(str(header.get("kid")))
        if refusal == "broker_token_key_revoked":
            raise _revoked()
        if refusal is not None:
            raise InvalidRequest("The token is not a valid broker access token.", reason=refusal)
        return claims

    def _key_refusal(self, kid: str) -> str | None:
        """Why tokens signed by ``kid`` are refused now, per the key table; None while it is published."""
        with self.db.transaction() as session:
            row = queries.get_signing_key(session, kid=kid)
            if row is None:
                return "broker_token_invalid"
            if row.revoked_at is not None:
                return "broker_token_key_revoked"
            if row.publish_until is not None and row.publish_until <= self.clock():
                return "broker_token_invalid"
        return None


def _revoked() -> InvalidRequest:
    return InvalidRequest(
        "The token was signed by a key the broker has revoked: get a new one.", reason="broker_token_key_revoked"
    )
