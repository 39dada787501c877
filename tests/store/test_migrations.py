"""Schema revisions on SQLite and PostgreSQL: targets by id or file name, downgrades, and a database that a
newer release migrated (expand-only: served; contracted: refused)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import inspect, text

from broker.errors import SchemaMismatch
from broker.store import db as store_db
from broker.store import migrations
from broker.store.db import Database, migrations_path

HEAD = "0013_signing_key_revocation"


@pytest.fixture(autouse=True)
def back_to_head(db_url: str) -> Iterator[None]:
    """The PostgreSQL test database is shared by the session: leave it at this release's head."""
    yield
    database = Database(db_url)
    with database.engine.begin() as conn:
        # A pretended newer revision names this release's head again; a real downgrade is upgraded back.
        conn.execute(text("UPDATE alembic_version SET version_num = :h WHERE version_num LIKE '0099%'"), {"h": HEAD})
    database.dispose()
    store_db.upgrade(db_url)


def set_version(db_url: str, revision: str, serves_from: str | None) -> None:
    """Pretend a newer release migrated the database: a revision this release does not know."""
    database = Database(db_url)
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
        conn.execute(text("UPDATE schema_compatibility SET serves_from = :s"), {"s": serves_from})
    database.dispose()


def tables(db_url: str) -> set[str]:
    database = Database(db_url)
    try:
        return set(inspect(database.engine).get_table_names())
    finally:
        database.dispose()


def test_targets_by_revision_id_or_file_name() -> None:
    assert migrations.head_revisions() == (HEAD,)
    assert migrations.resolve("0001") == migrations.resolve("0001_initial_schema") == "0001"
    assert migrations.resolve("0003_mfa_factors") == "0003_mfa_factors"
    assert migrations.resolve("head") == "heads"
    assert migrations.label("0002") == "0002 (0002_signing_keys)"
    with pytest.raises(SchemaMismatch) as info:
        migrations.resolve("0013_tomorrow")
    assert info.value.reason == "schema_unknown_target"
    assert "broker db history" in info.value.message and HEAD in info.value.message


def test_every_new_migration_says_whether_it_contracts() -> None:
    """Rule 2 of "Writing migrations": each revision after 0007 declares ``contract`` explicitly."""
    names = [r.name for r in migrations.history()]
    for name in names[names.index("0007_audit_segments") + 1 :]:
        source = (migrations_path() / "versions" / f"{name}.py").read_text()
        assert "\ncontract = " in source, f"{name} must say `contract = False` (expand-only) or `contract = True`"
    kinds = {r.id: r.contract for r in migrations.history()}
    assert kinds["0007_audit_segments"] and not kinds["0010_scim_provisioning"] and not kinds[HEAD]


def test_downgrade_and_upgrade_to_named_revisions(db_url: str) -> None:
    state = migrations.status(db_url)
    assert state.current == (HEAD,) and state.at_head and state.serves_from == "0007_audit_segments"
    state = migrations.downgrade(db_url, to="0009_saml_sessions")
    assert state.current == ("0009_saml_sessions",) and not state.at_head and not state.servable
    assert "scim_users" not in tables(db_url) and "schema_compatibility" not in tables(db_url)
    assert migrations.upgrade(db_url, to="0010_scim_provisioning").current == ("0010_scim_provisioning",)
    assert "scim_users" in tables(db_url)
    state = migrations.upgrade(db_url)
    assert state.current == (HEAD,) and state.serves_from == "0007_audit_segments"
    assert migrations.upgrade(db_url).current == (HEAD,)  # idempotent


def test_moving_the_wrong_way_says_which_command(db_url: str) -> None:
    with pytest.raises(SchemaMismatch) as info:
        migrations.upgrade(db_url, to="0009_saml_sessions")
    assert info.value.reason == "schema_wrong_direction"
    assert "broker db downgrade --to 0009_saml_sessions" in info.value.message
    with pytest.raises(SchemaMismatch) as info:
        migrations.downgrade(db_url, to="head")
    assert info.value.reason == "schema_wrong_direction"


def test_an_impossible_downgrade_changes_nothing_and_says_restore_the_backup(db_url: str) -> None:
    for target in ("0006_merge_parallel_branches", "0001_initial_schema"):
        with pytest.raises(SchemaMismatch) as info:
            migrations.downgrade(db_url, to=target)
        assert info.value.reason == "schema_irreversible"
        assert "0007_audit_segments cannot be downgraded" in info.value.message
        assert "Restore the pre-upgrade backup" in info.value.message
        assert f"The database is still at {HEAD}." in info.value.message
        # One transaction: the revisions above 0007 were not undone either.
        assert migrations.status(db_url).current == (HEAD,)
        assert {"scim_users", "schema_compatibility", "saml_sessions"} <= tables(db_url)


def test_a_newer_expand_only_schema_is_served(db_url: str) -> None:
    set_version(db_url, "0099_next_release", "0007_audit_segments")
    state = migrations.status(db_url)
    assert state.ahead and state.unknown == ("0099_next_release",) and state.servable
    with pytest.raises(SchemaMismatch) as info:
        migrations.upgrade(db_url)
    assert info.value.reason == "schema_ahead_servable"
    message = info.value.message
    assert "The database is at revision 0099_next_release, which this release does not know" in message
    assert f"This release's newest revision is {HEAD}." in message
    assert "serves it as it is: nothing to do" in message
    assert f"run the newer release's `broker db downgrade --to {HEAD}`" in message
    database = Database(db_url)
    ready, detail = migrations.is_ready(database)
    database.dispose()
    assert ready and "only expanded since 0007_audit_segments" in detail


def test_a_contracted_newer_schema_is_refused(db_url: str) -> None:
    set_version(db_url, "0099_next_release", "0099_next_release")
    state = migrations.status(db_url)
    assert state.ahead and not state.servable
    attempts = (lambda: migrations.upgrade(db_url), lambda: migrations.downgrade(db_url, to="0010_scim_provisioning"))
    for attempt in attempts:
        with pytest.raises(SchemaMismatch) as info:
            attempt()
        assert info.value.reason == "schema_ahead"
        assert "contracted the schema, so this release cannot serve it" in info.value.message
        assert f"the newer release's `broker db downgrade --to {HEAD}`" in info.value.message
    database = Database(db_url)
    ready, detail = migrations.is_ready(database)
    database.dispose()
    assert not ready and "contracted past this release" in detail


def test_no_test_migration_ships_with_the_product() -> None:
    names = sorted(p.name for p in (migrations_path() / "versions").glob("*.py"))
    assert names[-1] == f"{HEAD}.py" and not any("next_release" in n for n in names)
