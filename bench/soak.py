"""Soak: token exchanges at 70% of peak for ten minutes; zero errors and resident memory growth under 10%.

``--peak`` is the closed-loop throughput from ``bench/processes.py`` on the same machine (or measure it with
``--measure-peak``). The soak drives ``0.7 * peak`` exchanges per second open loop against
``broker serve --workers 2`` on PostgreSQL and samples the resident memory (RSS) of the server and its worker
processes every ``--sample`` seconds. Growth is last sample versus the first one taken after a one-minute
warm-up (or a sixth of the run, whichever is shorter), so start-up allocation is not counted as a leak.

    .venv/bin/python bench/soak.py --measure-peak --minutes 10      # the full soak (outside CI)
    .venv/bin/python bench/soak.py --peak 140 --minutes 2            # a shortened run

It prints the figures; it is not a pass/fail test.
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil

from bench._exchange_rig import DEFAULT_PG, exchange_broker, exchange_form, throwaway_postgres
from bench.processes import run as closed_loop
from tests.support.workload_tokens import TestIssuer


def rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        total += child.memory_info().rss
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak", type=float, help="peak exchanges/s on this machine")
    parser.add_argument("--measure-peak", action="store_true", help="measure the peak first (15 s closed loop)")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--sample", type=float, default=10)
    parser.add_argument("--database", default=DEFAULT_PG)
    args = parser.parse_args()
    issuer = TestIssuer("https://k8s.soak.test")
    with throwaway_postgres(args.database) as db_url, exchange_broker(db_url, issuer, workers=2) as (url, pid):
        peak = args.peak
        if args.measure_peak or peak is None:
            tokens = [issuer.token(audience="broker", lifetime=7200) for _ in range(4000)]
            peak, _, _ = closed_loop(url, tokens, 16, 15)
        rate = 0.7 * peak
        seconds = args.minutes * 60
        count = int(rate * seconds)
        print(f"peak {peak:.1f}/s; soaking at {rate:.1f}/s for {args.minutes:g} min ({count} exchanges)", flush=True)
        print("pre-signing tokens ...", flush=True)
        tokens = [issuer.token(audience="broker", lifetime=int(seconds) + 3600) for _ in range(count)]
        samples: list[tuple[float, float]] = []
        errors = 0
        lock = threading.Lock()
        stop = threading.Event()

        def sampler() -> None:
            begin = time.perf_counter()
            while not stop.wait(args.sample):
                samples.append((time.perf_counter() - begin, rss_mb(pid)))

        threading.Thread(target=sampler, daemon=True).start()
        start = time.perf_counter() + 0.1
        http = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))

        def one(i: int) -> None:
            nonlocal errors
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                ok = http.post(f"{url}/oauth2/token", data=exchange_form(tokens[i])).status_code == 200
            except httpx.HTTPError:
                ok = False
            if not ok:
                with lock:
                    errors += 1

        with ThreadPoolExecutor(max_workers=64) as pool:
            list(pool.map(one, range(count)))
        elapsed = time.perf_counter() - start
        stop.set()
        http.close()
    warm = min(60.0, seconds / 6)
    after = [mb for t, mb in samples if t >= warm] or [mb for _, mb in samples]
    growth = (after[-1] - after[0]) / after[0] * 100 if after else float("nan")
    print(f"\nachieved {count / elapsed:.1f}/s over {elapsed:.0f} s; errors {errors}")
    print("RSS MB (server + workers): " + ", ".join(f"{t:.0f}s={mb:.0f}" for t, mb in samples))
    print(f"RSS growth after warm-up: {growth:+.1f}% (target < 10%), errors: {errors} (target 0)")


if __name__ == "__main__":
    main()
