"""The composition root (``broker.services``): each service built once, on first use, from the settings."""

from __future__ import annotations

import subprocess
import sys

from broker.context import utcnow
from broker.services import build_services
from broker.settings import load_settings
from tests.conftest import base_config
from tests.support.cli import ROOT

# Never contacted: the services under test here do not build an STS client.
UNREACHABLE_STS = "http://127.0.0.1:9"


def test_listing_sessions_builds_the_database_and_operations_only(db_url: str) -> None:
    """What ``broker sessions list`` needs: no STS client, no signing keys, no sign-in connectors."""
    services = build_services(load_settings(None, **base_config(db_url, UNREACHABLE_STS)))
    try:
        assert services.operations.sessions() == []
        built = set(services.__dict__) - {"settings", "clock", "_sts"}
        assert "sts" not in built and "tokens" not in built and "broker" not in built and "oauth" not in built
        assert {"db", "audit", "operations"} <= built
    finally:
        services.close()


def test_every_service_shares_one_database_audit_trail_and_clock(db_url: str) -> None:
    def clock():  # type: ignore[no-untyped-def]
        return utcnow()

    services = build_services(load_settings(None, **base_config(db_url, UNREACHABLE_STS)), clock=clock)
    try:
        issuance, operations, broker = services.issuance, services.operations, services.broker
        assert issuance.db is operations.db is broker.db is services.oauth.endpoint.db is services.db
        assert issuance.audit is operations.audit is broker.audit is services.audit
        assert issuance.clock is operations.clock is broker.clock is clock
        # One source of open just-in-time windows: the elevation service's.
        assert issuance.active_grants == operations.elevation.active_grants
        assert broker.issuance is issuance and broker.mfa is services.mfa
    finally:
        services.close()


def test_building_imports_nothing_until_asked() -> None:
    """``broker --help`` and ``import broker.services`` load no database, settings or sign-in code."""
    probe = (
        "import sys, broker.services, broker.cli; "
        "print(sorted(m for m in sys.modules if m in {'broker.store.db', 'broker.federation', 'broker.operations', "
        "'broker.oauth.server', 'sqlalchemy', 'boto3'}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
