"""Real peer processes for tests: moto's STS server, and the broker itself on a real socket."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, *, timeout: float = 60.0, process: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def end_process_group(process: subprocess.Popen[Any], *, timeout: float = 10.0) -> None:
    """End ``process`` and everything it started (its process group, see :func:`spawned`): SIGTERM, then
    SIGKILL for whatever is still there after ``timeout`` seconds or once the leader has gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=timeout)
    # A child that ignored the leader's shutdown (a server the command started) must not outlive the test.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def spawned(args: list[str], **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """Start a process in a process group of its own, and end the whole group on exit, failed test or not."""
    process = subprocess.Popen(args, start_new_session=True, **popen)
    try:
        yield process
    finally:
        end_process_group(process)


@contextlib.contextmanager
def moto_server(*, enforce_auth: bool = False) -> Iterator[str]:
    """moto's server (STS and IAM emulator) over HTTP on loopback; yields its endpoint URL.

    ``enforce_auth`` turns on moto's IAM authentication (INITIAL_NO_AUTH_ACTION_COUNT=0), so calls signed
    with keys moto does not know are refused as AWS would refuse them.
    """
    port = free_port()
    env = dict(os.environ)
    if enforce_auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    with spawned(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    ) as process:
        wait_for_port(port, process=process)
        yield f"http://127.0.0.1:{port}"


class LiveServer:
    """Serve an ASGI app with uvicorn on a real loopback socket, in a thread of the test process."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the broker did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def broker_env(**extra: str) -> dict[str, str]:
    """The environment for a broker subprocess: this one, minus anything that could point it elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(extra)
    return env
