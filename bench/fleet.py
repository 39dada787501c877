"""The audited hot paths beside their peers, back to back in one run, driven by ``wrk``.

Phases (each ``--seconds`` long, ``--connections`` requests in flight, closed loop):

1. oidc-provider's ``client_credentials`` grant (the npm peer in ``tests/peers/oidc``): the reference;
2. the broker's RFC 8693 token exchange, ``broker serve --workers 1``, PostgreSQL, durable audit, single-use
   ``jti`` (``bench/_exchange_rig.py``): every request carries a fresh pre-signed workload token;
3. the same with ``--workers 2``;
4. a credential issuance, ``POST /api/v1/credentials`` for a CLI sign-in (bearer check, policy, STS through
   moto's server, issuance row and audit event), one process;
5. the SAML ACS end to end over HTTP (``POST /saml/corp/acs``: size and form checks, python3-saml
   validation, assertion-ID replay guard, the login request this browser started, a session and its audit
   row), one process, with pre-signed responses to pre-started sign-ins;
6. raw python3-saml validation of the same responses (``OneLogin_Saml2_Response.is_valid``), in this
   process on one thread, as the floor the ACS is measured against.

For each phase it prints requests per second, p50 and p99, and the CPU the server used per completed request
(its processes' CPU time over the run divided by completed requests, read through psutil), then the ratios
against the targets, and the load average (the figures are only as quiet as the machine).

    .venv/bin/python bench/fleet.py                           # about 3 minutes
    .venv/bin/python bench/fleet.py --seconds 20 --phases oidc,exchange

It only prints: it is not a pass/fail test.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import wrk  # noqa: E402
from bench._exchange_rig import DEFAULT_PG, exchange_broker, exchange_form, throwaway_postgres  # noqa: E402
from broker.store import db as store_db  # noqa: E402
from tests.support.oidc_provider import OidcProvider  # noqa: E402
from tests.support.processes import free_port, wait_for_port  # noqa: E402
from tests.support.workload_tokens import TestIssuer  # noqa: E402

RESOURCE = "urn:bench:api"
CLIENT_SECRET = "bench-client-secret-0123456789-0123456789"
SAML_STORE = "corp"
BINDING_COOKIE = "broker_saml"
WARM_UP = 30
PHASES = ("oidc", "exchange", "issuance", "saml")


@dataclass(frozen=True)
class Phase:
    name: str
    result: wrk.WrkResult
    cpu_ms: float | None  # server CPU per completed request

    def row(self) -> str:
        r = self.result
        cpu = f"{self.cpu_ms:>8.2f}" if self.cpu_ms is not None else f"{'-':>8}"
        return f"{self.name:<44} {r.rate:>8.1f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {cpu} {r.ok:>8} {r.failed:>6}"


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and every process under it."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def measured(name: str, pid: int, drive: Callable[[], wrk.WrkResult]) -> Phase:
    before = cpu_seconds(pid)
    result = drive()
    used = cpu_seconds(pid) - before
    return Phase(name, result, used * 1000 / result.ok if result.ok else None)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


# ---------------------------------------------------------------- oidc-provider


def oidc_phase(args: argparse.Namespace, workdir: Path) -> Phase:
    with OidcProvider() as idp:
        idp.start(
            {
                "clients": [
                    {
                        "client_id": "svc",
                        "client_secret": CLIENT_SECRET,
                        "redirect_uris": [],
                        "grant_types": ["client_credentials"],
                        "response_types": [],
                        "token_endpoint_auth_method": "client_secret_basic",
                    }
                ],
                "accounts": {},
                "resource_servers": {RESOURCE: {"scope": "read", "access_token_ttl": 600}},
            }
        )
        body = urlencode({"grant_type": "client_credentials", "resource": RESOURCE, "scope": "read"})
        basic = "Basic " + base64.b64encode(f"svc:{CLIENT_SECRET}".encode()).decode()
        with httpx.Client(timeout=30) as http:
            for _ in range(WARM_UP):
                http.post(f"{idp.issuer}/token", content=body, headers=_form_headers(basic)).raise_for_status()
        requests_file = workdir / "oidc.txt"
        wrk.write_requests(requests_file, [("", body)])
        proc = idp._proc  # the node process serving the grant
        assert proc is not None
        return measured(
            "oidc-provider client_credentials",
            proc.pid,
            lambda: wrk.run(
                f"{idp.issuer}/token",
                requests_file=requests_file,
                workdir=workdir,
                seconds=args.seconds,
                connections=args.connections,
                authorization=basic,
            ),
        )


def _form_headers(authorization: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if authorization:
        headers["Authorization"] = authorization
    return headers


# ---------------------------------------------------------------- token exchange


def exchange_phases(args: argparse.Namespace, workdir: Path) -> list[Phase]:
    issuer = TestIssuer("https://k8s.bench.test")
    need = int(args.max_rate * args.seconds) + WARM_UP
    started = time.perf_counter()
    tokens = [issuer.token(audience="broker", lifetime=3600) for _ in range(need)]
    print(f"  signed {need} workload tokens in {time.perf_counter() - started:.1f} s", flush=True)
    requests_file = workdir / "exchange.txt"
    wrk.write_requests(requests_file, [("", urlencode(exchange_form(t))) for t in tokens[WARM_UP:]])
    phases = []
    for workers in (1, 2):
        # A fresh database each time: the same tokens are single-use per database, not per run.
        with (
            throwaway_postgres(args.database) as db_url,
            exchange_broker(db_url, issuer, workers=workers) as (url, pid),
        ):
            with httpx.Client(timeout=30) as http:
                for token in tokens[:WARM_UP]:
                    http.post(f"{url}/oauth2/token", data=exchange_form(token)).raise_for_status()
            label = "process" if workers == 1 else "processes"
            phases.append(
                measured(
                    f"broker token exchange, {workers} {label}",
                    pid,
                    lambda url=url: wrk.run(  # type: ignore[misc]
                        f"{url}/oauth2/token",
                        requests_file=requests_file,
                        workdir=workdir,
                        seconds=args.seconds,
                        connections=args.connections,
                    ),
                )
            )
    return phases


# ---------------------------------------------------------------- credential issuance


def issuance_phase(args: argparse.Namespace, workdir: Path) -> Phase:
    """``POST /api/v1/credentials`` for a CLI sign-in: bearer check, policy, STS (moto's server), issuance row
    and audit event. STS answers are moto's, on these cores too: the figure that matters is the CPU ms."""
    from tests.support.processes import moto_server

    port = free_port()
    config: dict[str, Any] = {
        "mode": "production",
        "public_url": f"http://127.0.0.1:{port}",
        "secret_key": secrets.token_urlsafe(40),
        "log_level": "WARNING",
        "session": {"cookie_secure": False},
        "aws": {"region": "us-east-1", "federation_endpoint": None, "max_attempts": 1},
        "roles": [
            {
                "name": "readonly",
                "role_arn": "arn:aws:iam::123456789012:role/ReadOnly",
                "grant": [{"groups": ["engineering"]}],
                "mfa": "mfa",
                "max_duration_seconds": 3600,
            }
        ],
    }
    with moto_server() as sts, throwaway_postgres(args.database) as db_url:
        config["database_url"] = db_url
        config["aws"]["sts_endpoint_url"] = sts
        path = workdir / "issuance.yaml"
        path.write_text(yaml.safe_dump(config))
        store_db.upgrade(db_url)
        bearer = "Bearer " + cli_access_token(path)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")  # moto accepts any key
        server = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve", "-c", str(path), "--port", str(port)], cwd=ROOT, env=env
        )
        try:
            wait_for_port(port, process=server, timeout=60)
            url = f"http://127.0.0.1:{port}/api/v1/credentials"
            body = '{"role": "readonly"}'
            with httpx.Client(timeout=30) as http:
                for _ in range(WARM_UP):
                    answer = http.post(url, content=body, headers={"Authorization": bearer})
                    if answer.status_code != 200:
                        raise RuntimeError(f"issuance warm-up refused: {answer.status_code} {answer.text[:300]}")
            requests_file = workdir / "issuance.txt"
            wrk.write_requests(requests_file, [("", body)])
            return measured(
                "broker credential issuance (CLI, moto STS)",
                server.pid,
                lambda: wrk.run(
                    url,
                    requests_file=requests_file,
                    workdir=workdir,
                    seconds=args.seconds,
                    connections=args.connections,
                    content_type="application/json",
                    authorization=bearer,
                ),
            )
        finally:
            server.terminate()
            server.wait(timeout=30)


def cli_access_token(config_path: Path) -> str:
    """A CLI sign-in made as the device flow would at its end: a refresh family and its access token."""
    from broker.app import create_app
    from broker.context import Context
    from broker.identity import Identity, MfaEvidence, MfaLevel
    from broker.settings import load_settings

    app = create_app(load_settings(config_path))
    cli = app.state.oauth.cli
    now = datetime.now(UTC)
    identity = Identity(
        subject="alice",
        issuer="https://idp.bench",
        store="corp",
        username="alice",
        email="alice@corp.example",
        groups=frozenset({"engineering"}),
        mfa=MfaEvidence(level=MfaLevel.MFA, methods=("pwd", "otp"), authenticated_at=now),
    )
    try:
        with app.state.services.db.transaction() as session:
            started = cli.start(
                session,
                identity=identity,
                session_expires_at=now + timedelta(hours=8),
                grant_type="urn:ietf:params:oauth:grant-type:device_code",
                ctx=Context(),
            )
        response = cli.token_response(
            family_id=started.family_id,
            identity=identity,
            expires_at=started.expires_at,
            refresh_token=started.refresh_token,
        )
    finally:
        app.state.oauth.close()
        app.state.services.db.dispose()
    token: str = response["access_token"]
    return token


# ---------------------------------------------------------------- SAML ACS


@contextlib.contextmanager
def saml_broker(database_url: str, idp: Any, *, port: int, secret_key: str) -> Iterator[int]:
    """Yield the server pid of ``broker serve`` on ``port`` with one SAML identity store."""
    config: dict[str, Any] = {
        "mode": "production",
        "public_url": f"http://127.0.0.1:{port}",
        "database_url": database_url,
        "secret_key": secret_key,
        "log_level": "WARNING",
        "session": {"cookie_secure": False},
        "aws": {"federation_endpoint": None},
        "rate_limits": {"limits": {"acs.ip": "100000000/minute", "login.ip": "100000000/minute"}},
        "identity_stores": [
            {
                "type": "saml",
                "name": SAML_STORE,
                "idp_entity_id": idp.entity_id,
                "sso_url": idp.sso_url,
                "certificates": [idp.cert_pem.decode()],
            }
        ],
    }
    with tempfile.TemporaryDirectory(prefix="broker-bench-saml-") as tmp:
        path = Path(tmp) / "broker.yaml"
        path.write_text(yaml.safe_dump(config))
        store_db.upgrade(database_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        server = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve", "-c", str(path), "--port", str(port)], cwd=ROOT, env=env
        )
        try:
            wait_for_port(port, process=server, timeout=60)
            yield server.pid
        finally:
            server.terminate()
            server.wait(timeout=30)


def start_sign_ins(database_url: str, secret_key: str, count: int) -> list[tuple[str, str]]:
    """Record ``count`` sign-ins in flight, as ``GET /saml/corp/login`` would: (request ID, binding cookie)."""
    from pydantic import SecretStr

    from broker.keys import Keys
    from broker.signin.saml import LOGIN_REQUEST_TTL
    from broker.store import queries
    from broker.store.db import Database

    keys = Keys(SecretStr(secret_key))
    db = Database(database_url)
    now = datetime.now(UTC)
    started = [(f"id-bench-{uuid.uuid4().hex}", secrets.token_urlsafe(24)) for _ in range(count)]
    try:
        with db.transaction() as session:
            for request_id, binding in started:
                queries.save_login_request(
                    session,
                    state_hmac=keys.mac("saml-request", f"{SAML_STORE}\n{request_id}"),
                    store=SAML_STORE,
                    browser_hmac=keys.mac("saml-binding", binding),
                    data={"next": "/", "level": "none"},
                    now=now,
                    expires_at=now + LOGIN_REQUEST_TTL,
                )
    finally:
        db.dispose()
    return started


def sign_responses(idp: Any, request_ids: list[str]) -> list[str]:
    """Base64 responses to ``request_ids``, fresh IDs each, signed (assertion, then response) in-process.

    pysaml2's IdP builds one unsigned response; each copy gets its own Response and Assertion IDs, its
    InResponseTo and one of 50 users, and is signed with RSA-SHA256 through python3-saml's xmlsec binding:
    pysaml2 runs the xmlsec1 binary per signature, far too slow for the thousands a run needs.
    """
    from lxml import etree
    from onelogin.saml2.utils import OneLogin_Saml2_Utils

    from tests.support.saml_idp import AC_MFA

    template = idp.make_response(
        name_id="bench-user@corp.example",
        attributes={"email": ["bench-user@corp.example"], "groups": ["engineering"]},
        authn_context_class_ref=AC_MFA,
        in_response_to="bench-request-id",
        sign_response=False,
        sign_assertion=False,
        lifetime=timedelta(minutes=10),
    )
    root = etree.fromstring(template.encode())
    assertion_tag = "{urn:oasis:names:tc:SAML:2.0:assertion}Assertion"
    response_id, assertion_id = root.get("ID"), root.find(assertion_tag).get("ID")
    key, cert = idp.key_pem.decode(), idp.cert_pem.decode()
    signed = []
    for index, request_id in enumerate(request_ids):
        xml = (
            template.replace(response_id, "_r" + uuid.uuid4().hex)
            .replace(assertion_id, "_a" + uuid.uuid4().hex)
            .replace("bench-request-id", request_id)
            .replace("bench-user@", f"user{index % 50}@")
        )
        response = etree.fromstring(xml.encode())
        assertion = response.find(assertion_tag)
        signed_assertion = etree.fromstring(OneLogin_Saml2_Utils.add_sign(etree.tostring(assertion), key, cert))
        response.replace(assertion, signed_assertion)
        signed.append(base64.b64encode(OneLogin_Saml2_Utils.add_sign(response, key, cert)).decode())
    return signed


def saml_phases(args: argparse.Namespace, workdir: Path) -> list[Phase]:
    """The ACS over HTTP, then python3-saml alone on the very same responses."""
    from onelogin.saml2.response import OneLogin_Saml2_Response

    from broker.connectors.saml import SamlConnector
    from broker.identity import MfaLevel
    from broker.settings import SamlStoreConfig
    from tests.support.saml_idp import SamlIdp

    port = free_port()
    public = f"http://127.0.0.1:{port}"
    idp = SamlIdp(f"{public}/saml/{SAML_STORE}/metadata", f"{public}/saml/{SAML_STORE}/acs")
    secret_key = secrets.token_urlsafe(40)
    phases = []
    with throwaway_postgres(args.database) as db_url:
        store_db.upgrade(db_url)
        count = args.saml_count + WARM_UP
        started = time.perf_counter()
        sign_ins = start_sign_ins(db_url, secret_key, count)
        responses = sign_responses(idp, [request_id for request_id, _ in sign_ins])
        print(f"  signed {count} SAML responses in {time.perf_counter() - started:.1f} s", flush=True)
        lines = [
            (f"{BINDING_COOKIE}={binding}", urlencode({"SAMLResponse": response, "RelayState": "/"}))
            for (_, binding), response in zip(sign_ins, responses, strict=True)
        ]
        requests_file = workdir / "acs.txt"
        wrk.write_requests(requests_file, lines[WARM_UP:])
        acs = f"{public}/saml/{SAML_STORE}/acs"
        with saml_broker(db_url, idp, port=port, secret_key=secret_key) as pid:
            with httpx.Client(timeout=30) as http:
                for cookie, body in lines[:WARM_UP]:
                    answer = http.post(acs, content=body, headers={**_form_headers(), "Cookie": cookie})
                    if answer.status_code != 303:
                        raise RuntimeError(f"ACS warm-up refused: {answer.status_code} {answer.text[:300]}")
            phases.append(
                measured(
                    "broker SAML ACS end to end",
                    pid,
                    lambda: wrk.run(
                        acs,
                        requests_file=requests_file,
                        workdir=workdir,
                        seconds=args.saml_seconds,
                        connections=args.connections,
                    ),
                )
            )
    # The floor: python3-saml's own validation of the same responses, with the settings the connector built.
    connector = SamlConnector(
        SamlStoreConfig(
            type="saml",
            name=SAML_STORE,
            idp_entity_id=idp.entity_id,
            sso_url=idp.sso_url,
            certificates=[idp.cert_pem.decode()],
        ),
        public_url=public,
    )
    settings, request_data = connector._settings[MfaLevel.NONE], connector._request_data
    latencies: list[float] = []
    before = time.process_time()
    begun = time.perf_counter()
    for (request_id, _), response in zip(sign_ins, responses, strict=True):
        t = time.perf_counter()
        OneLogin_Saml2_Response(settings, response).is_valid(request_data, request_id=request_id, raise_exceptions=True)
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - begun
    cpu_ms = (time.process_time() - before) * 1000 / len(latencies)
    latencies.sort()
    raw = wrk.WrkResult(
        requests=len(latencies),
        seconds=elapsed,
        failed=0,
        timeouts=0,
        refused=0,
        p50_ms=latencies[len(latencies) // 2] * 1000,
        p90_ms=latencies[int(len(latencies) * 0.9)] * 1000,
        p99_ms=latencies[int(len(latencies) * 0.99)] * 1000,
        max_ms=latencies[-1] * 1000,
    )
    phases.append(Phase("raw python3-saml validation", raw, cpu_ms))
    return phases


# ---------------------------------------------------------------- report


def report(phases: dict[str, Phase], args: argparse.Namespace, load_before: str) -> None:
    print(f"\nwrk, {args.connections} connections, {args.seconds:g} s per phase, PostgreSQL, durable audit")
    print(f"load average before: {load_before}; after: {load_average()}\n")
    print(f"{'endpoint':<44} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms':>8} {'ok':>8} {'failed':>6}")
    for phase in phases.values():
        print(phase.row())
    print()

    def ratio(label: str, a: str, b: str, target: float) -> None:
        if a in phases and b in phases and phases[b].result.rate:
            value = phases[a].result.rate / phases[b].result.rate
            print(f"{label:<44} {value:>6.2f}x  (target >= {target}x: {'met' if value >= target else 'NOT met'})")

    one, two = "broker token exchange, 1 process", "broker token exchange, 2 processes"
    ratio("2 processes : oidc-provider", two, "oidc-provider client_credentials", 0.5)
    ratio("2 processes : 1 process", two, one, 1.7)
    ratio("SAML ACS over HTTP : raw python3-saml", "broker SAML ACS end to end", "raw python3-saml validation", 0.6)
    for name in (one, two):
        if name in phases:
            phase = phases[name]
            p99 = phase.result.p99_ms
            print(f"{name + ' p99':<44} {p99:>6.1f} ms (target <= 50 ms: {'met' if p99 <= 50 else 'NOT met'})")
            if phase.cpu_ms is not None:
                cpu = phase.cpu_ms
                print(
                    f"{name + ' CPU':<44} {cpu:>6.2f} ms per exchange "
                    f"(target <= 2 ms: {'met' if cpu <= 2 else 'NOT met'})"
                )
    short = [p.name for p in phases.values() if p.result.failed]
    if short:
        print(f"\nfailed requests in: {', '.join(short)} (for the broker, raise --max-rate if tokens ran out)")


def main() -> None:
    # The brokers under test reach moto's STS emulator, which accepts any key; these grant nothing anywhere.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="length of each wrk phase")
    parser.add_argument("--connections", type=int, default=16, help="requests wrk keeps in flight")
    parser.add_argument("--database", default=DEFAULT_PG, help="PostgreSQL server URL (throwaway databases)")
    parser.add_argument(
        "--max-rate", type=float, default=800, help="highest broker rate to pre-sign single-use tokens for"
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all, in that order)",
    )
    parser.add_argument("--saml-seconds", type=float, default=10, help="length of the ACS phase")
    parser.add_argument(
        "--saml-count", type=int, default=1500, help="SAML responses to pre-sign (more than the ACS can take)"
    )
    args = parser.parse_args()
    wanted = set(args.phases.split(","))
    if wanted - set(PHASES):
        parser.error(f"unknown phases {sorted(wanted - set(PHASES))}; choose from {','.join(PHASES)}")
    wrk.ensure_installed()
    load_before = load_average()
    started = time.perf_counter()
    phases: dict[str, Phase] = {}
    with tempfile.TemporaryDirectory(prefix="broker-fleet-") as tmp:
        workdir = Path(tmp)
        if "oidc" in wanted:
            print("oidc-provider client_credentials ...", flush=True)
            phase = oidc_phase(args, workdir)
            phases[phase.name] = phase
        if "exchange" in wanted:
            print("broker token exchange, 1 and 2 processes ...", flush=True)
            for phase in exchange_phases(args, workdir):
                phases[phase.name] = phase
        if "issuance" in wanted:
            print("broker credential issuance (CLI sign-in, moto STS) ...", flush=True)
            phase = issuance_phase(args, workdir)
            phases[phase.name] = phase
        if "saml" in wanted:
            print("SAML ACS end to end, and raw python3-saml ...", flush=True)
            for phase in saml_phases(args, workdir):
                phases[phase.name] = phase
    report(phases, args, load_before)
    print(f"\nwhole run: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
