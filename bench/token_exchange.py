"""Token-exchange benchmark: the broker's RFC 8693 endpoint beside oidc-provider's token endpoint.

Both run on this machine in the same run, driven at the same fixed rate (open loop: request ``i`` is due at
``start + i / rate``, and latency is measured from when it was due, so a slow server is not flattered by the
driver waiting for it). Phase 1 drives the ``oidc-provider`` peer's client-credentials grant (RS256 JWT access
tokens, RFC 9068); phase 2 exchanges each of those tokens at the broker (verify against the IdP's JWKS,
single-use ``jti`` and the durable audit-chain append in SQLite or PostgreSQL, policy, ES256 signing) for a
broker access token.

    .venv/bin/python bench/token_exchange.py --rate 100 --seconds 5
    .venv/bin/python bench/token_exchange.py --rate 100 --seconds 10 \
        --database postgresql://postgres@127.0.0.1:5432/postgres      # a throwaway database is created on it

The broker's abuse limits stay enabled (their cost is measured) but with budgets above the offered rate:
the benchmark measures the endpoint, not the limiter refusing it.

It prints throughput and p50/p99 latency side by side and the broker/IdP ratio. It only prints: it is not a
pass/fail test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.store import db as store_db  # noqa: E402
from tests.support.oidc_provider import OidcProvider  # noqa: E402
from tests.support.processes import free_port, wait_for_port  # noqa: E402

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
RESOURCE = "urn:broker:exchange"
AUDIENCE = "https://bench.internal"
SECRET = "bench-client-secret-0123456789-0123456789"


@dataclass
class Result:
    name: str
    latencies: list[float]
    errors: int
    elapsed: float

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0] * 1000
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(p) - 1] * 1000


def drive(name: str, count: int, rate: float, call: Callable[[int], bool], workers: int) -> Result:
    """Issue ``count`` calls at ``rate`` per second; latency counts from each call's due time."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    start = time.perf_counter() + 0.1

    def one(i: int) -> None:
        nonlocal errors
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        ok = call(i)
        took = time.perf_counter() - due
        with lock:
            if ok:
                latencies.append(took)
            else:
                errors += 1

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(count)))
    return Result(name, latencies, errors, time.perf_counter() - start)


def broker_config(workdir: Path, issuer: str, port: int, database_url: str | None = None) -> Path:
    config = {
        "mode": "production",
        "public_url": f"http://127.0.0.1:{port}",
        "database_url": database_url or f"sqlite:///{workdir / 'broker.db'}",
        "secret_key": "bench-root-secret-0123456789-abcdefghijklmnop",
        "log_level": "WARNING",
        "session": {"cookie_secure": False},
        "aws": {"federation_endpoint": None},
        "rate_limits": {"limits": {"token.ip": "10000000/minute", "token.principal": "10000000/minute"}},
        "oauth": {
            "workload_issuers": [
                {
                    "name": "corp-idp",
                    "issuer": issuer,
                    "jwks_uri": f"{issuer}/jwks",
                    "audiences": [RESOURCE],
                    "token_types": ["access_token"],
                    "single_use_jti": True,
                }
            ],
            "audiences": [{"audience": AUDIENCE, "scopes": ["read"], "grant": [{"stores": ["corp-idp"]}]}],
        },
    }
    path = workdir / "broker.yaml"
    path.write_text(yaml.safe_dump(config))
    store_db.upgrade(config["database_url"])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (both phases)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each phase")
    parser.add_argument("--workers", type=int, default=32, help="driver threads")
    parser.add_argument("--database", help="PostgreSQL server URL; a throwaway database is created (default SQLite)")
    args = parser.parse_args()
    count = max(1, int(args.rate * args.seconds))

    with (
        throwaway_database(args.database) as database_url,
        tempfile.TemporaryDirectory(prefix="broker-bench-") as tmp,
        OidcProvider() as idp,
    ):
        idp.start(
            {
                "clients": [
                    {
                        "client_id": "svc",
                        "client_secret": SECRET,
                        "redirect_uris": [],
                        "grant_types": ["client_credentials"],
                        "response_types": [],
                        "token_endpoint_auth_method": "client_secret_basic",
                    }
                ],
                "accounts": {},
                "resource_servers": {RESOURCE: {"scope": "exchange", "access_token_ttl": 3600}},
            }
        )
        port = free_port()
        config = broker_config(Path(tmp), idp.issuer, port, database_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env["BROKER_CONFIG"] = str(config)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "broker.app:from_environment",
                "--factory",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
        )
        try:
            wait_for_port(port, process=server)
            limits = httpx.Limits(max_connections=args.workers, max_keepalive_connections=args.workers)
            with httpx.Client(limits=limits, timeout=30) as http:
                tokens: list[str | None] = [None] * count

                def idp_call(i: int) -> bool:
                    response = http.post(
                        f"{idp.issuer}/token",
                        data={"grant_type": "client_credentials", "resource": RESOURCE, "scope": "exchange"},
                        auth=("svc", SECRET),
                    )
                    if response.status_code != 200:
                        return False
                    tokens[i] = response.json()["access_token"]
                    return True

                def broker_call(i: int) -> bool:
                    token = tokens[i]
                    if token is None:
                        return False
                    response = http.post(
                        f"http://127.0.0.1:{port}/oauth2/token",
                        data={
                            "grant_type": GRANT,
                            "subject_token": token,
                            "subject_token_type": ACCESS_TOKEN_TYPE,
                            "audience": AUDIENCE,
                        },
                    )
                    return response.status_code == 200

                # Warm both up (JWKS fetch, first signing key, connection pools) outside the measurement.
                idp_call(0)
                tokens[0] and broker_call(0)
                results = [
                    drive("oidc-provider client_credentials", count, args.rate, idp_call, args.workers),
                    drive("broker token exchange (RFC 8693)", count, args.rate, broker_call, args.workers),
                ]
        finally:
            server.terminate()
            server.wait(timeout=10)

    store = "PostgreSQL" if args.database else "SQLite"
    print(f"\n{count} requests per phase at {args.rate:g}/s offered, {args.workers} driver threads, {store}\n")
    print(f"{'endpoint':<36} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in results:
        print(f"{r.name:<36} {r.throughput:>8.1f} {r.percentile(50):>8.2f} {r.percentile(99):>8.2f} {r.errors:>7}")
    idp_result, broker_result = results
    print(
        f"\nratio broker/IdP: throughput {broker_result.throughput / idp_result.throughput:.2f}x, "
        f"p50 {broker_result.percentile(50) / idp_result.percentile(50):.2f}x, "
        f"p99 {broker_result.percentile(99) / idp_result.percentile(99):.2f}x"
    )


@contextlib.contextmanager
def throwaway_database(server_url: str | None) -> Iterator[str | None]:
    """A fresh PostgreSQL database on ``server_url`` for this run (dropped afterwards), or None for SQLite."""
    if server_url is None:
        yield None
        return
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


if __name__ == "__main__":
    main()
