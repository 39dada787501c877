"""Shared by ``processes.py`` and ``soak.py``: a ``broker serve`` on PostgreSQL exchanging workload tokens.

The workload issuer's keys are inline (no IdP in the path), tokens are signed before the clock starts, and
``single_use_jti`` is on, so each exchange does the full durable work: JWT verification, one replay-guard row,
policy, ES256 signing and one audit-chain append, committed on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.store import db as store_db  # noqa: E402
from tests.support.processes import free_port, wait_for_port  # noqa: E402
from tests.support.workload_tokens import TestIssuer  # noqa: E402

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
AUDIENCE = "https://payments.internal"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def throwaway_postgres(server_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text

    base = store_db.normalize_url(server_url)
    name = f"broker_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def exchange_broker(database_url: str, issuer: TestIssuer, *, workers: int) -> Iterator[tuple[str, int]]:
    """Yield (base URL, server pid) of ``broker serve --workers N``."""
    port = free_port()
    config: dict[str, Any] = {
        "mode": "production",
        "public_url": f"http://127.0.0.1:{port}",
        "database_url": database_url,
        "secret_key": secrets.token_urlsafe(40),
        "log_level": "WARNING",
        "session": {"cookie_secure": False},
        "aws": {"federation_endpoint": None},
        "rate_limits": {"limits": {"token.ip": "100000000/minute"}},
        "oauth": {
            "workload_issuers": [
                {
                    "name": "k8s",
                    "issuer": issuer.issuer,
                    "jwks": issuer.jwks(),
                    "audiences": ["broker"],
                    "single_use_jti": True,
                }
            ],
            "audiences": [{"audience": AUDIENCE, "grant": [{"stores": ["k8s"]}]}],
        },
    }
    with tempfile.TemporaryDirectory(prefix="broker-bench-") as tmp:
        path = Path(tmp) / "broker.yaml"
        path.write_text(yaml.safe_dump(config))
        store_db.upgrade(database_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "broker.cli",
                "serve",
                "-c",
                str(path),
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            cwd=ROOT,
            env=env,
        )
        try:
            wait_for_port(port, process=server, timeout=60)
            yield f"http://127.0.0.1:{port}", server.pid
        finally:
            server.terminate()
            server.wait(timeout=30)


def exchange_form(token: str) -> dict[str, str]:
    return {"grant_type": GRANT, "subject_token": token, "subject_token_type": JWT_TYPE, "audience": AUDIENCE}
