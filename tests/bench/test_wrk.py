"""The bench's wrk driver: its output parser, and its Lua script feeding each request line exactly once.

No timing is asserted here (speed is measured in ``bench/``, never in pass/fail tests): only that the figures
are read correctly and that single-use request lines are not replayed.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from bench import wrk
from tests.support.loopback import LoopbackServer

OUTPUT = """Running 1s test @ http://127.0.0.1:8000
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    10.00ms    2.00ms  40.00ms   90.00%
  1000 requests in 1.00s, 200.00KB read
  Non-2xx or 3xx responses: 3
WRK_JSON {"requests":1000,"duration_us":2000000,"connect":0,"read":1,"write":0,"status":3,"timeout":2,\
"p50_us":9500,"p90_us":12000,"p99_us":31000,"max_us":40000,"mean_us":10000.0}
Requests/sec:    500.00
"""

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make system-deps)")


def test_parse_reads_the_done_hook_line() -> None:
    result = wrk.parse(OUTPUT)
    # Socket errors and timeouts never completed; the 3 refused responses did, and are not successes.
    assert (result.requests, result.refused, result.failed, result.timeouts, result.ok) == (1000, 3, 6, 2, 997)
    assert result.seconds == 2.0
    assert result.rate == 498.5
    assert (result.p50_ms, result.p90_ms, result.p99_ms, result.max_ms) == (9.5, 12.0, 31.0, 40.0)


def test_parse_refuses_output_without_figures() -> None:
    with pytest.raises(ValueError, match="WRK_JSON"):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_request_lines_may_not_hold_separators(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tab or a newline"):
        wrk.write_requests(tmp_path / "r.txt", [("", "a\tb")])


@needs_wrk
def test_each_line_is_sent_once_across_threads(tmp_path: Path) -> None:
    lines = [(f"c=cookie{i}", f"body={i}") for i in range(40)]
    requests_file = tmp_path / "requests.txt"
    wrk.write_requests(requests_file, lines)
    with LoopbackServer() as server:  # answers every POST with 404: each one counts as failed
        result = wrk.run(
            f"{server.url}/token", requests_file=requests_file, workdir=tmp_path, seconds=1, connections=4, threads=2
        )
        bodies = Counter(body.decode() for body in server.bodies)
        cookies = {h.get("cookie") for h in server.headers}
    assert result.requests > 0 and result.refused == result.requests and result.ok == 0  # every answer a 404
    sent = {body: n for body, n in bodies.items() if body}
    assert sent == {f"body={i}": 1 for i in range(40)}  # no line twice, none skipped; then empty bodies
    assert {f"c=cookie{i}" for i in range(40)} <= cookies


@needs_wrk
def test_a_single_line_is_repeated_with_its_authorization(tmp_path: Path) -> None:
    requests_file = tmp_path / "requests.txt"
    wrk.write_requests(requests_file, [("", "grant_type=client_credentials")])
    with LoopbackServer() as server:
        result = wrk.run(
            f"{server.url}/token",
            requests_file=requests_file,
            workdir=tmp_path,
            seconds=1,
            connections=2,
            authorization="Basic c3ZjOnNlY3JldA==",
        )
        bodies = set(server.bodies)
        authorizations = {h.get("authorization") for h in server.headers}
        paths = {path for _, path in server.hits}
    assert result.requests > 1
    assert bodies == {b"grant_type=client_credentials"}
    assert authorizations == {"Basic c3ZjOnNlY3JldA=="}
    assert paths == {"/token"}
