"""Fail closed, on SQLite and PostgreSQL: when the database refuses the audit row, a token exchange for a broker
token or for AWS credentials (STS already answered, moto over HTTP) answers 503 and nothing leaves, no issuance
is recorded; once the database accepts rows again, the same requests succeed without a restart."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from sqlalchemy import func, select, text

from broker.app import create_app
from broker.oauth.token_exchange import TOKEN_TYPE_AWS_CREDENTIALS
from broker.settings import load_settings
from broker.store.db import Database
from broker.store.models import AuditEvent, Issuance
from tests.conftest import base_config
from tests.support.processes import LiveServer
from tests.support.workload_tokens import TestIssuer

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
PAYMENTS = "https://payments.internal"
DEPLOYER_ARN = "arn:aws:iam::123456789012:role/Deployer"


@contextmanager
def audit_inserts_refused(database: Database, db_url: str) -> Iterator[None]:
    """A trigger that rejects every new audit row, as a full disk or a revoked grant would."""
    with database.transaction() as s:
        if db_url.startswith("sqlite"):
            s.execute(
                text(
                    "CREATE TRIGGER audit_refused BEFORE INSERT ON audit_events "
                    "BEGIN SELECT RAISE(ABORT, 'audit storage full'); END"
                )
            )
        else:
            s.execute(
                text(
                    "CREATE FUNCTION audit_refused() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'audit storage full'; END $$"
                )
            )
            s.execute(
                text(
                    "CREATE TRIGGER audit_refused BEFORE INSERT ON audit_events "
                    "FOR EACH ROW EXECUTE FUNCTION audit_refused()"
                )
            )
    try:
        yield
    finally:
        with database.transaction() as s:
            if db_url.startswith("sqlite"):
                s.execute(text("DROP TRIGGER audit_refused"))
            else:
                s.execute(text("DROP TRIGGER audit_refused ON audit_events"))
                s.execute(text("DROP FUNCTION audit_refused()"))


def test_no_token_leaves_when_the_audit_row_cannot_commit(database: Database, db_url: str, sts_endpoint: str) -> None:
    cluster = TestIssuer("https://k8s.audit-faults.test")
    config = base_config(
        db_url,
        sts_endpoint,
        secret_key=secrets.token_urlsafe(40),
        oauth={
            "workload_issuers": [
                {"name": "k8s", "issuer": cluster.issuer, "jwks": cluster.jwks(), "audiences": ["broker"]}
            ],
            "audiences": [{"audience": PAYMENTS, "grant": [{"stores": ["k8s"]}]}],
        },
    )

    config["roles"].append(
        {"name": "deployer", "role_arn": DEPLOYER_ARN, "mfa": "none", "grant": [{"stores": ["k8s"]}]}
    )

    def exchange(**extra: str) -> httpx.Response:
        form = {
            "grant_type": GRANT,
            "subject_token": cluster.token(audience="broker"),
            "subject_token_type": TOKEN_TYPE_JWT,
            "audience": PAYMENTS,
            **extra,
        }
        return httpx.post(f"{server.url}/oauth2/token", data=form, timeout=30)

    def aws_credentials() -> httpx.Response:
        return exchange(audience="deployer", requested_token_type=TOKEN_TYPE_AWS_CREDENTIALS)

    def audit_rows() -> int:
        with database.transaction() as s:
            return int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0)

    def issuances() -> int:
        with database.transaction() as s:
            return int(s.scalar(select(func.count()).select_from(Issuance)) or 0)

    with LiveServer(create_app(load_settings(None, **config))) as server:
        before = audit_rows()
        with audit_inserts_refused(database, db_url):
            refused = exchange()
            no_aws = aws_credentials()
        assert refused.status_code == 503
        assert refused.json()["error"] == "temporarily_unavailable"
        assert "access_token" not in refused.text and "eyJ" not in refused.text
        assert no_aws.status_code == 503 and no_aws.json()["error"] == "temporarily_unavailable"
        assert "AccessKeyId" not in no_aws.text and "SessionToken" not in no_aws.text
        assert (audit_rows(), issuances()) == (before, 0)
        recovered = exchange()
        assert recovered.status_code == 200, recovered.text
        assert recovered.json()["access_token"]
        issued = aws_credentials()
        assert issued.status_code == 200, issued.text
        assert issued.json()["aws_credentials"]["AccessKeyId"]
        assert (audit_rows(), issuances()) == (before + 2, 1)
