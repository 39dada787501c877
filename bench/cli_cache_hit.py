"""Benchmark: `broker credential-process` on a cache hit versus `python3 -c pass`, side by side.

The AWS CLI runs the helper on every call, so a cache hit should cost little more than starting Python.
Both commands run alternately in the same loop on the same machine; the script prints medians, p90 and the
ratio (target: at most 1.5). It only prints; nothing here passes or fails.

    .venv/bin/python bench/cli_cache_hit.py [--runs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="broker-bench-")
    env = dict(os.environ, BROKER_CLIENT_HOME=home, BROKER_CLIENT_KEYRING="file")
    os.environ.update(BROKER_CLIENT_HOME=home)
    from broker.client import cache

    url = "https://broker.example.com"
    expiry = datetime.now(UTC) + timedelta(hours=1)
    body = json.dumps(
        {
            "Version": 1,
            "AccessKeyId": "ASIABENCH",
            "SecretAccessKey": "x",
            "SessionToken": "y",
            "Expiration": expiry.isoformat().replace("+00:00", "Z"),
        }
    ).encode()
    cache.write(url, "readonly", None, body, expiry.timestamp())
    helper = shutil.which("broker", path=os.path.dirname(sys.executable)) or "broker"
    hit = [helper, "credential-process", "--role", "readonly", "--url", url]
    peer = [sys.executable, "-c", "pass"]
    timed(hit, env)  # warm the file cache for both
    timed(peer, env)
    ours, theirs = [], []
    for _ in range(args.runs):
        ours.append(timed(hit, env))
        theirs.append(timed(peer, env))
    shutil.rmtree(home)

    def describe(samples: list[float]) -> str:
        ordered = sorted(samples)
        p90 = ordered[int(len(ordered) * 0.9)]
        return f"median {statistics.median(ordered) * 1000:6.1f} ms   p90 {p90 * 1000:6.1f} ms"

    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, {args.runs} runs each, interleaved")
    print(f"broker credential-process (cache hit)  {describe(ours)}")
    print(f"python -c pass (peer)                  {describe(theirs)}")
    print(f"ratio (median): {ratio:.2f}x   target: <= 1.5x")


if __name__ == "__main__":
    main()
