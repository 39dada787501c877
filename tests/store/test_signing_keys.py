"""broker.store.signing_keys on SQLite and PostgreSQL: one key per generation, retired, then removed."""

from __future__ import annotations

from datetime import timedelta

from broker.store import signing_keys
from broker.store.db import Database
from broker.store.models import SigningKey
from tests.store.conftest import NOW, assert_refused_by_database

HOUR = timedelta(hours=1)


def key(kid: str, generation: int) -> SigningKey:
    return SigningKey(
        kid=kid, generation=generation, alg="ES256", public_jwk={"kid": kid}, private_jwk_encrypted="sealed",
        created_at=NOW,
    )  # fmt: skip


def test_add_list_retire_and_delete(database: Database) -> None:
    with database.transaction() as s:
        assert signing_keys.latest_signing_key(s) is None
        assert signing_keys.add_signing_key(s, key=key("k1", 1))
        assert signing_keys.add_signing_key(s, key=key("k2", 2))
    with database.transaction() as s:
        latest = signing_keys.latest_signing_key(s)
        assert latest is not None and latest.kid == "k2"
        assert [k.kid for k in signing_keys.list_signing_keys(s, now=NOW)] == ["k2", "k1"]
        signing_keys.retire_signing_key(s, kid="k1", retired_at=NOW, publish_until=NOW + HOUR)
    with database.transaction() as s:
        # Retiring twice keeps the first window.
        signing_keys.retire_signing_key(s, kid="k1", retired_at=NOW + HOUR, publish_until=NOW + 5 * HOUR)
    with database.transaction() as s:
        assert [k.kid for k in signing_keys.list_signing_keys(s, now=NOW + HOUR / 2)] == ["k2", "k1"]
        assert [k.kid for k in signing_keys.list_signing_keys(s, now=NOW + HOUR)] == ["k2"]
        assert signing_keys.delete_expired_signing_keys(s, now=NOW + HOUR / 2) == 0
        assert signing_keys.delete_expired_signing_keys(s, now=NOW + HOUR) == 1
    with database.transaction() as s:
        assert [k.kid for k in signing_keys.list_signing_keys(s, now=NOW)] == ["k2"]


def test_a_generation_is_added_once(database: Database) -> None:
    with database.transaction() as s:
        assert signing_keys.add_signing_key(s, key=key("k1", 1))
        # The loser of a race for a generation learns it and its transaction stays usable.
        assert not signing_keys.add_signing_key(s, key=key("k1-other", 1))
        assert signing_keys.add_signing_key(s, key=key("k2", 2))
    assert_refused_by_database(
        database, SigningKey, kid="k3", generation=2, alg="ES256", public_jwk={}, private_jwk_encrypted="x",
        created_at=NOW,
    )  # fmt: skip
