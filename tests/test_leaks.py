"""Secrets never reach logs, audit rows, error pages or stderr, even with every logger at DEBUG."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import httpx
import pyotp
import pytest
import yaml

from broker import logs
from broker.aws.sts import AssumeRoleRequest, Sts
from broker.connectors.local import hash_password
from broker.settings import AwsSettings
from broker.store.db import Database
from tests.conftest import base_config
from tests.support.federation_standin import FederationStandIn
from tests.support.portal import csrf_from, env_credentials, login_local
from tests.support.processes import broker_env, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "leak-test-password-with-length"


def dump_database(db_url: str) -> str:
    """Every row of every table the broker has, as text: a new table is searched without anyone listing it."""
    from broker.store.models import Base

    database = Database(db_url)
    try:
        with database.engine.connect() as conn:
            return "\n".join(str(row) for table in Base.metadata.sorted_tables for row in conn.execute(table.select()))
    finally:
        database.dispose()


def test_sts_debug_logging_never_prints_credentials(sts_endpoint: str, capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("DEBUG")
    for name in ("", "botocore", "boto3", "urllib3", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG)  # every logger at DEBUG, on purpose
    creds = Sts(AwsSettings(sts_endpoint_url=sts_endpoint)).assume_role(
        AssumeRoleRequest(
            role_arn="arn:aws:iam::123456789012:role/ReadOnly",
            role_session_name="alice",
            source_identity="alice",
            duration_seconds=900,
            tags={},
        )
    )
    logging.getLogger("broker.test").debug("Session=%s", '{"sessionKey": "' + creds.secret_access_key + '"}')
    logging.getLogger("botocore.test").warning("<SecretAccessKey>%s</SecretAccessKey>", creds.secret_access_key)
    out, err = capfd.readouterr()
    assert creds.secret_access_key not in out + err
    assert creds.session_token not in out + err
    assert "[redacted]" in err  # the scrubber ran on the records that did pass


def test_whole_flow_at_debug_leaks_nothing(tmp_path: Path, sts_endpoint: str) -> None:
    secret = pyotp.random_base32()
    db_url = f"sqlite:///{tmp_path / 'broker.db'}"
    config: dict[str, Any] = base_config(
        db_url,
        sts_endpoint,
        log_level="DEBUG",
        identity_stores=[
            {
                "type": "local",
                "name": "breakglass",
                "accounts": [
                    {
                        "username": "alice",
                        "password_hash": hash_password(PASSWORD),
                        "totp_secret": "env:ALICE_TOTP",
                        "email": "alice@example.com",
                        "groups": ["engineering"],
                    }
                ],
            }
        ],
    )
    with FederationStandIn(sts_endpoint) as standin:
        config["aws"]["federation_endpoint"] = standin.url
        path = tmp_path / "broker.yaml"
        path.write_text(yaml.safe_dump(config))
        env = broker_env(ALICE_TOTP=secret)
        subprocess.run(
            [sys.executable, "-m", "broker.cli", "db", "upgrade", "-c", str(path)],
            check=True,
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=60,
        )
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve", "-c", str(path), "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen: list[str] = []
        try:
            wait_for_port(port, process=server)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                totp = pyotp.TOTP(secret).now()
                seen.append(totp)
                assert (
                    login_local(client, store="breakglass", username="alice", password=PASSWORD, code=totp).status_code
                    == 303
                )
                cookie = client.cookies.get("broker_session") or ""
                portal = client.get("/", headers={"Accept": "text/html"})
                page = client.post(
                    "/credentials",
                    data={"role": "readonly", "csrf": csrf_from(portal.text)},
                    headers={"Accept": "text/html"},
                )
                creds = env_credentials(page.text)
                console = client.post("/console", data={"role": "readonly", "csrf": csrf_from(portal.text)})
                signin_token = console.headers["location"].split("SigninToken=")[1]
                # A failed attempt with a secret-looking value, to exercise the error paths too.
                client.post(
                    "/login/local/breakglass", data={"username": "x", "password": PASSWORD, "totp": "1", "csrf": "bad"}
                )
                boto3.client(
                    "sts",
                    endpoint_url=sts_endpoint,
                    region_name="us-east-1",
                    aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                    aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                    aws_session_token=creds["AWS_SESSION_TOKEN"],
                ).get_caller_identity()
        finally:
            server.send_signal(signal.SIGINT)
            out, err = server.communicate(timeout=30)
    output = out + err
    assert '"path": "/credentials"' in output  # the logs were captured: the request log is there
    dump = dump_database(db_url)
    secrets = {
        "secret access key": creds["AWS_SECRET_ACCESS_KEY"],
        "session token": creds["AWS_SESSION_TOKEN"],
        "password": PASSWORD,
        "TOTP secret": secret,
        "session cookie": cookie,
        "sign-in token": signin_token,
        "TOTP code": seen[0],
    }
    for what, value in secrets.items():
        assert value not in output, f"{what} appears in the logs"
        if what != "TOTP code":  # six digits can occur by chance inside hashes; checked in the logs only
            assert value not in dump, f"{what} appears in the database"
    assert creds["AWS_ACCESS_KEY_ID"] in dump  # the key id (not a secret) is recorded for CloudTrail tracing


def test_federated_flows_at_debug_leak_nothing(tmp_path: Path, sts_endpoint: str) -> None:
    """OIDC sign-in, SAML sign-in and token exchange on a `broker serve` process with every logger at DEBUG:
    logs, every table and the HTTP answers are searched for ID tokens, assertions, codes, client secrets,
    session cookies and workload/broker tokens."""
    import base64
    import re
    from urllib.parse import parse_qs, urlsplit

    from tests.support.broker_process import BrokerProcess, migrate, write_config
    from tests.support.oidc_flow import ACCOUNTS, CLIENT_SECRET, provider_config, store_config
    from tests.support.oidc_provider import OidcProvider, login_over_http
    from tests.support.saml_broker import USERS, saml_store
    from tests.support.saml_idp import AC_MFA, SamlIdpServer
    from tests.support.workload_tokens import TestIssuer

    db_url = f"sqlite:///{tmp_path / 'broker.db'}"
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    cluster = TestIssuer("https://k8s.leak.test")
    idp = SamlIdpServer(f"{public}/saml/corp/metadata", f"{public}/saml/corp/acs", USERS)
    idp.start()
    answers: list[str] = []
    seen: dict[str, str] = {"oidc client secret": CLIENT_SECRET}
    try:
        with OidcProvider() as op:
            op.start(provider_config(public, "oidc"))
            config = base_config(
                db_url,
                sts_endpoint,
                public_url=public,
                log_level="DEBUG",
                identity_stores=[saml_store(idp), store_config("oidc", op.issuer)],
                oauth={
                    "workload_issuers": [
                        {"name": "k8s", "issuer": cluster.issuer, "jwks": cluster.jwks(), "audiences": ["broker"]}
                    ],
                    "audiences": [{"audience": "https://payments.internal", "grant": [{"stores": ["k8s"]}]}],
                },
            )
            path = write_config(tmp_path / "broker.yaml", config)
            migrate(path)
            with BrokerProcess(path, port=port) as server, httpx.Client(timeout=30) as browser:
                # OIDC: authorization code and state travel through the browser; the ID token never should.
                start = browser.get(f"{public}/login/oidc")
                callback = login_over_http(browser, start.headers["location"], "alice", ACCOUNTS["alice"]["password"])
                params = parse_qs(urlsplit(callback.headers["location"]).query)
                seen["authorization code"] = params["code"][0]
                seen["oidc state"] = params["state"][0]
                done = browser.get(callback.headers["location"])
                answers.append(done.text + _headers(done))
                seen["oidc session cookie"] = browser.cookies.get("broker_session") or ""
                browser.cookies.clear()
                # SAML: the signed response and its assertion.
                begin = browser.get(f"{public}/saml/corp/login", headers={"Accept": "text/html"})
                request = idp.idp.parse_authn_request_full(
                    parse_qs(urlsplit(begin.headers["location"]).query)["SAMLRequest"][0], None
                )
                xml = idp.idp.make_response(
                    name_id="alice@corp.example",
                    attributes=USERS["alice"].get("attributes"),
                    authn_context_class_ref=AC_MFA,
                    in_response_to=request.request_id,
                )
                encoded = base64.b64encode(xml.encode()).decode()
                seen["saml response"] = encoded[:80]
                seen["saml assertion id"] = re.findall(r'<(?:\w+:)?Assertion\b[^>]*?\bID="([^"]+)"', xml)[0]
                acs = browser.post(f"{public}/saml/corp/acs", data={"SAMLResponse": encoded})
                assert acs.status_code == 303, acs.text
                answers.append(acs.text + _headers(acs))
                seen["saml session cookie"] = browser.cookies.get("broker_session") or ""
                # Replay it: the error page must not echo it either.
                replay = browser.post(f"{public}/saml/corp/acs", data={"SAMLResponse": encoded})
                answers.append(replay.text)
                # Token exchange: the workload token in, a broker token out.
                workload = cluster.token(audience="broker")
                seen["workload token"] = workload
                exchanged = httpx.post(
                    f"{public}/oauth2/token",
                    data={
                        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                        "subject_token": workload,
                        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                        "audience": "https://payments.internal",
                    },
                    timeout=30,
                )
                assert exchanged.status_code == 200, exchanged.text
                seen["broker access token"] = exchanged.json()["access_token"]
                again = httpx.post(
                    f"{public}/oauth2/token",
                    data={"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": workload},
                    timeout=30,
                )
                answers.append(again.text)
            output = server.output
    finally:
        idp.stop()
    assert "/oauth2/token" in output and "debug" in output.lower()  # logs captured, at DEBUG
    dump = dump_database(db_url)
    for what, value in seen.items():
        assert value, what
        assert value not in output, f"{what} appears in the logs"
        assert value not in dump, f"{what} appears in the database"
        assert all(value not in answer for answer in answers), f"{what} appears in an HTTP answer"
    # No JWT at all (ID token, workload token, broker token) in the logs or the database.
    assert not re.search(r"eyJ[\w-]{10,}\.eyJ[\w-]{10,}\.", output + dump)


def _headers(response: httpx.Response) -> str:
    """Every header but Set-Cookie (where the session cookie legitimately goes, once)."""
    return str([(k, v) for k, v in response.headers.multi_items() if k.lower() != "set-cookie"])
