"""Certificate sign-ins per second, beside token exchange, for the same role on the same broker.

One ``broker serve`` (SQLite by default, or a throwaway PostgreSQL database with ``--database``) and moto's
STS on this machine. Three phases, each a closed loop of ``--clients`` threads for ``--seconds``, every
request ending in real STS credentials, an issuance row and an audit-chain append:

1. RFC 8693 token exchange of a workload JWT (inline JWKS, single-use ``jti``) for AWS credentials;
2. RFC 7523 assertion with the device certificate chain in ``x5c``: signature with the leaf key, path
   validation with ``cryptography``'s verifier, a CRL lookup (served over HTTP on loopback, cached),
   single-use ``jti``;
3. mutual TLS forwarded by a proxy (Envoy's ``x-forwarded-client-cert``): path validation and CRL, no
   assertion.

Tokens and assertions are signed before the clock starts. It prints throughput, p50 and p99 per phase, the
ratio to token exchange, and the machine's load average. It only prints: it is not a pass/fail test.

    .venv/bin/python bench/device_sign_in.py --seconds 10 --clients 8
    .venv/bin/python bench/device_sign_in.py --database postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._exchange_rig import throwaway_postgres  # noqa: E402
from broker.store import db as store_db  # noqa: E402
from tests.support.certificates import Hierarchy, make_crl  # noqa: E402
from tests.support.devices import JWT_BEARER, assertion  # noqa: E402
from tests.support.loopback import LoopbackServer  # noqa: E402
from tests.support.processes import free_port, moto_server, wait_for_port  # noqa: E402
from tests.support.workload_tokens import TestIssuer  # noqa: E402

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
AWS_TYPE = "urn:identity-broker:params:oauth:token-type:aws-credentials"
ROLE = "telemetry"
EXCHANGE_FORM = {
    "grant_type": EXCHANGE,
    "subject_token_type": JWT_TYPE,
    "requested_token_type": AWS_TYPE,
    "audience": ROLE,
}


def _post(url: str, data: dict[str, str], headers: dict[str, str] | None, client: httpx.Client) -> httpx.Response:
    return client.post(url, data=data, headers=headers)


@contextlib.contextmanager
def broker(
    database_url: str, sts: str, folder: Path, hierarchy: Hierarchy, issuer: TestIssuer, crl: str
) -> Iterator[str]:
    port = free_port()
    anchors, intermediates = hierarchy.write(folder)
    config: dict[str, Any] = {
        "mode": "production",
        "public_url": f"http://127.0.0.1:{port}",
        "database_url": database_url,
        "secret_key": secrets.token_urlsafe(40),
        "log_level": "WARNING",
        "session": {"cookie_secure": False},
        "aws": {"federation_endpoint": None, "sts_endpoint_url": sts, "max_attempts": 1},
        "rate_limits": {"limits": {"token.ip": "100000000/minute"}},
        "identity_stores": [
            {
                "type": "x509",
                "name": "edge",
                "trust_anchors": [str(anchors)],
                "intermediates": [str(intermediates)],
                "crl_urls": [crl],
                "rules": [{"match": {"san.uri": "spiffe://corp.example/edge/*"}, "username": "{subject.CN}"}],
            }
        ],
        "devices": {"trusted_proxies": [{"addresses": ["127.0.0.1/32"], "format": "envoy"}]},
        "oauth": {
            "workload_issuers": [
                {
                    "name": "k8s",
                    "issuer": issuer.issuer,
                    "jwks": issuer.jwks(),
                    "audiences": ["broker"],
                    "single_use_jti": True,
                }
            ]
        },
        "roles": [
            {
                "name": ROLE,
                "role_arn": "arn:aws:iam::123456789012:role/Telemetry",
                "mfa": "none",
                "grant": [{"stores": ["edge", "k8s"]}],
            }
        ],
    }
    path = folder / "broker.yaml"
    path.write_text(yaml.safe_dump(config))
    store_db.upgrade(database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.setdefault("AWS_ACCESS_KEY_ID", "bench")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    server = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "serve", "-c", str(path), "--port", str(port)], cwd=ROOT, env=env
    )
    try:
        wait_for_port(port, process=server, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(
    name: str, requests: list[Callable[[httpx.Client], httpx.Response]], clients: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    cursor = iter(requests)
    deadline = time.monotonic() + seconds

    def worker() -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < deadline:
                with lock:
                    request = next(cursor, None)
                if request is None:
                    return
                started = time.perf_counter()
                response = request(client)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if response.status_code != 200:
                        errors.append(response.text[:200])

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - began
    ordered = sorted(latencies)
    return {
        "name": name,
        "rate": len(latencies) / wall,
        "p50": statistics.median(ordered) * 1000 if ordered else 0.0,
        "p99": ordered[int(len(ordered) * 0.99) - 1] * 1000 if len(ordered) > 1 else 0.0,
        "count": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--database", help="PostgreSQL server URL (a throwaway database is created on it)")
    args = parser.parse_args()
    budget = int(args.seconds * 400) + 100  # more than one process can serve in the time
    hierarchy, issuer = Hierarchy(), TestIssuer()
    devices = [hierarchy.device(f"gw-{i}") for i in range(32)]
    print(f"signing {budget} tokens and {budget} assertions...", flush=True)
    tokens = [issuer.token(audience="broker") for _ in range(budget)]
    with LoopbackServer() as crl_server, moto_server() as sts, tempfile.TemporaryDirectory() as tmp:
        crl_server.routes["/edge.crl"] = (200, make_crl(hierarchy.intermediate, []))
        database = (
            contextlib.nullcontext(f"sqlite:///{tmp}/bench.db")
            if not args.database
            else throwaway_postgres(args.database)
        )
        with database as url, broker(url, sts, Path(tmp), hierarchy, issuer, crl_server.url + "/edge.crl") as base:
            audience = base + "/oauth2/token"
            signed = [assertion(devices[i % len(devices)], audience=audience) for i in range(budget)]
            headers = [
                {"x-forwarded-client-cert": f'Cert="{quote(devices[i % len(devices)].pem.decode(), safe="")}"'}
                for i in range(budget)
            ]
            httpx.post(audience, data={"grant_type": JWT_BEARER, "assertion": signed.pop(), "role": ROLE}, timeout=30)
            exchange = [functools.partial(_post, audience, {**EXCHANGE_FORM, "subject_token": t}, None) for t in tokens]
            certificate = [
                functools.partial(_post, audience, {"grant_type": JWT_BEARER, "assertion": a, "role": ROLE}, None)
                for a in signed
            ]
            forwarded = [functools.partial(_post, base + "/device/credentials", {"role": ROLE}, h) for h in headers]
            phases = [
                run("token exchange (RFC 8693) -> AWS", exchange, args.clients, args.seconds),
                run("certificate assertion (RFC 7523 x5c) -> AWS", certificate, args.clients, args.seconds),
                run("forwarded client certificate (mTLS at proxy) -> AWS", forwarded, args.clients, args.seconds),
            ]
    load = os.getloadavg()
    database_name = "PostgreSQL" if args.database else "SQLite"
    print(f"\ndatabase: {database_name}; {args.clients} clients, {args.seconds:.0f} s per phase")
    print(f"load average after the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    baseline = phases[0]["rate"] or 1.0
    for phase in phases:
        print(
            f"{phase['name']:<52} {phase['rate']:7.1f}/s  p50 {phase['p50']:7.1f} ms  p99 {phase['p99']:7.1f} ms  "
            f"{phase['rate'] / baseline:5.2f}x  ({phase['count']} requests, {phase['errors']} errors)"
        )
        if phase["first_error"]:
            print(f"    first error: {phase['first_error']}")


if __name__ == "__main__":
    main()
