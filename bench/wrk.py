"""Drive an HTTP endpoint with ``wrk`` (Debian's package) and read its figures back.

The load generator is C, not Python threads, so it does not eat the cores it measures. Requests come from a
file, one per line (``cookie<TAB>body``, the cookie part may be empty), because the broker's hot paths take
single-use values (a workload token's ``jti``, a SAML assertion ID): every request needs a fresh one. Each
wrk thread takes every n-th line; a thread that runs out sends an empty body, which the server refuses and
wrk counts as an error, so a file too short for the run shows up in the figures instead of as replays.

The Lua ``done`` hook prints one ``WRK_JSON`` line with wrk's own totals and latency percentiles (closed
loop: ``connections`` requests in flight at all times), parsed by :func:`parse`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

MARKER = "WRK_JSON "

LUA = r"""
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

local lines = {}
local index = 0
local path, content_type, auth = "/", "application/x-www-form-urlencoded", nil
function init(args)
  local file, threads = args[1], tonumber(args[2])
  path, content_type = args[3], args[4]
  if args[5] ~= nil and args[5] ~= "" then auth = args[5] end
  local i, first = 0, "\t"
  for line in io.lines(file) do
    if i == 0 then first = line end
    if i % threads == id then lines[#lines + 1] = line end
    i = i + 1
  end
  -- A file of one line is one request sent over and over (a grant with no single-use value).
  repeat_one = (i == 1)
  if repeat_one then lines = {first} end
end

local verified = false
function request()
  local line
  if repeat_one then
    line = lines[1]
  elseif id == 0 and not verified then
    -- wrk calls request() once on the first thread's state to check the script and never sends that
    -- request: peek at the line without spending it.
    verified = true
    line = lines[1] or "\t"
  else
    index = index + 1
    line = lines[index] or "\t"
  end
  local tab = line:find("\t", 1, true) or 0
  local cookie, body = line:sub(1, tab - 1), line:sub(tab + 1)
  local headers = {["Content-Type"] = content_type}
  if cookie ~= "" then headers["Cookie"] = cookie end
  if auth ~= nil then headers["Authorization"] = auth end
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """wrk's totals for one run. ``requests`` are completed responses, ``refused`` those with a status of 400
    or above; ``failed`` adds the socket errors and timeouts (requests that never completed)."""

    requests: int
    seconds: float
    failed: int
    timeouts: int
    refused: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def ok(self) -> int:
        return max(self.requests - self.refused, 0)

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return self.ok / self.seconds if self.seconds else 0.0


def parse(output: str) -> WrkResult:
    """The figures of wrk's run from its output (the ``WRK_JSON`` line printed by the Lua ``done`` hook)."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER) :])
            break
    else:
        raise ValueError(f"wrk printed no {MARKER.strip()} line; its output was:\n{output[-2000:]}")
    failed = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        failed=failed,
        timeouts=data["timeout"],
        refused=data["status"],
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
    )


def ensure_installed() -> str:
    """The wrk binary; installed from Debian's package if missing (the bench runs as root or with sudo)."""
    found = shutil.which("wrk")
    if found:
        return found
    sudo: list[str] = [] if _is_root() else ["sudo"]
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],
        check=True,
        env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed and apt-get could not install it")
    return found


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def write_requests(path: Path, lines: Sequence[tuple[str, str]]) -> None:
    """One request per line: ``cookie<TAB>body`` (neither may contain a tab or a newline)."""
    with path.open("w") as out:
        for cookie, body in lines:
            if any(c in cookie + body for c in "\t\n"):
                raise ValueError("a request line may not contain a tab or a newline")
            out.write(f"{cookie}\t{body}\n")


def run(
    url: str,
    *,
    requests_file: Path,
    workdir: Path,
    seconds: float,
    connections: int,
    threads: int = 2,
    content_type: str = "application/x-www-form-urlencoded",
    authorization: str = "",
) -> WrkResult:
    """POST the lines of ``requests_file`` to ``url`` for ``seconds`` with ``connections`` in flight."""
    script = workdir / "requests.lua"
    script.write_text(LUA)
    parts = urlsplit(url)
    threads = max(1, min(threads, connections))
    command = [
        ensure_installed(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"{parts.scheme}://{parts.netloc}",
        "--",
        str(requests_file),
        str(threads),
        parts.path or "/",
        content_type,
        authorization,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-1000:]}")
    return parse(done.stdout)
