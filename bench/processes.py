"""Scale-out benchmark: one broker process versus two (``broker serve --workers 1`` vs ``--workers 2``).

Closed loop: ``--clients`` threads each send token exchanges back to back for ``--seconds``; the figure is
completed exchanges per second. Both runs use the same machine, the same fresh PostgreSQL database server and
pre-signed tokens. The load generator runs on the same cores as the broker (say so when reading the ratio).

    .venv/bin/python bench/processes.py --seconds 20 --clients 16

Prints both throughputs and the ratio two/one (target >= 1.7x on two cores). It is not a pass/fail test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time

import httpx
import psutil

from bench._exchange_rig import DEFAULT_PG, exchange_broker, exchange_form, throwaway_postgres
from tests.support.workload_tokens import TestIssuer


def run(url: str, tokens: list[str], clients: int, seconds: float) -> tuple[float, int, int]:
    done = errors = 0
    lock = threading.Lock()
    cursor = iter(range(len(tokens)))
    stop = time.perf_counter() + seconds

    def client() -> None:
        nonlocal done, errors
        with httpx.Client(timeout=30) as http:
            while time.perf_counter() < stop:
                with lock:
                    index = next(cursor)
                ok = http.post(f"{url}/oauth2/token", data=exchange_form(tokens[index])).status_code == 200
                with lock:
                    done += ok
                    errors += not ok

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done / (time.perf_counter() - started), done, errors


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the broker (server and workers), this load generator and PostgreSQL."""

    def total(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    server = psutil.Process(server_pid)
    broker = total(server) + sum(total(c) for c in server.children(recursive=True))
    postgres = 0.0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "postgres":
            with contextlib.suppress(psutil.Error):
                postgres += total(process)
    return {"broker": broker, "load generator": total(psutil.Process()), "postgres": postgres}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--database", default=DEFAULT_PG, help="PostgreSQL server URL (a throwaway database)")
    parser.add_argument("--max-rate", type=float, default=1500, help="upper bound used to pre-sign enough tokens")
    args = parser.parse_args()
    issuer = TestIssuer("https://k8s.bench.test")
    need = int(args.max_rate * args.seconds) + 100
    print(f"pre-signing {need} workload tokens per run ...", flush=True)
    results = {}
    cpu: dict[int, dict[str, float]] = {}
    for workers in (1, 2):
        tokens = [issuer.token(audience="broker", lifetime=3600) for _ in range(need)]
        with (
            throwaway_postgres(args.database) as db_url,
            exchange_broker(db_url, issuer, workers=workers) as (url, pid),
        ):
            with httpx.Client(timeout=30) as warm:
                for token in tokens[-20:]:
                    warm.post(f"{url}/oauth2/token", data=exchange_form(token))
            before = cpu_seconds(pid)
            results[workers] = run(url, tokens[:-20], args.clients, args.seconds)
            after = cpu_seconds(pid)
            cpu[workers] = {k: (after[k] - before[k]) / args.seconds for k in after}
    print(f"\n{os.cpu_count()} cores, {args.clients} closed-loop clients, {args.seconds:g} s per run, PostgreSQL\n")
    print(f"{'processes':<10} {'exchanges/s':>12} {'completed':>10} {'errors':>7}")
    for workers, (rate, done, errors) in results.items():
        print(f"{workers:<10} {rate:>12.1f} {done:>10} {errors:>7}")
    print(f"\nratio two/one: {results[2][0] / results[1][0]:.2f}x (target >= 1.7x)")
    print("\nCPU cores busy during each run (where the two cores went):")
    for workers, shares in cpu.items():
        print(f"  {workers} process(es): " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items()))


if __name__ == "__main__":
    main()
