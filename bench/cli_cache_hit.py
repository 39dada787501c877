"""Benchmark: the credential helper on a cache hit versus `python -c pass`, side by side, same interpreter.

The AWS CLI runs the helper on every call, so a cache hit should cost little more than starting Python.
Measured, interleaved in one loop on the same machine with the same interpreter (hyperfine-style: wall time
of the whole process, warm file cache):

* the line `broker configure-aws` writes: `python -I -S .../broker/client/process.py --role R --url U`;
* the `broker credential-process` console script (what a hand-written profile might call);
* `python -c pass` (the peer: a bare interpreter start, with `site`);
* the local credentials endpoint (`broker credentials-endpoint`): one HTTP GET per refresh, no process at
  all, as an SDK's container credentials provider does it.

It prints medians, p90 and the ratios (target for the cache hit: at most 1.5x). It only prints.

    .venv/bin/python bench/cli_cache_hit.py [--runs 50]
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


def describe(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9)]
    return f"median {statistics.median(ordered) * 1000:7.2f} ms   p90 {p90 * 1000:7.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="broker-bench-")
    env = dict(os.environ, BROKER_CLIENT_HOME=home, BROKER_CLIENT_KEYRING="file")
    os.environ.update(BROKER_CLIENT_HOME=home)
    from broker.client import cache, process
    from broker.client.endpoint import CredentialsEndpoint

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
    commands = {
        "configure-aws line (python -I -S process.py)": [
            sys.executable,
            "-I",
            "-S",
            os.path.abspath(process.__file__),
            "--role",
            "readonly",
            "--url",
            url,
        ],
        "broker credential-process (console script)": [
            helper,
            "credential-process",
            "--role",
            "readonly",
            "--url",
            url,
        ],
        "python -c pass (peer)": [sys.executable, "-c", "pass"],
    }
    for command in commands.values():  # warm the file cache for each
        timed(command, env)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            samples[name].append(timed(command, env))

    import httpx

    endpoint_samples = []
    with CredentialsEndpoint(url, ["readonly"]) as endpoint, httpx.Client() as client:
        headers = {"Authorization": endpoint.token}
        client.get(endpoint.uri("readonly"), headers=headers).raise_for_status()
        for _ in range(args.runs):
            started = time.perf_counter()
            client.get(endpoint.uri("readonly"), headers=headers).raise_for_status()
            endpoint_samples.append(time.perf_counter() - started)
    shutil.rmtree(home)

    peer = statistics.median(samples["python -c pass (peer)"])
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load {load:.1f}, Python {sys.version.split()[0]} ({sys.executable})")
    print(f"{args.runs} runs each, interleaved")
    for name, values in samples.items():
        ratio = statistics.median(values) / peer
        print(f"{name:46s} {describe(values)}   {ratio:.2f}x")
    print(f"{'credentials endpoint, one GET (no process)':46s} {describe(endpoint_samples)}")
    line = statistics.median(samples["configure-aws line (python -I -S process.py)"]) / peer
    print(f"cache-hit ratio (configure-aws line / python -c pass): {line:.2f}x   target: <= 1.5x")


if __name__ == "__main__":
    main()
