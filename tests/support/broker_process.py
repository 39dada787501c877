"""``broker serve`` as a real subprocess: the deployment shape (one process per replica, shared database).

Several of these against one PostgreSQL (and optionally Redis) stand in for replicas behind a load balancer.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from tests.support.processes import broker_env, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def migrate(config_path: Path, **env: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "broker.cli", "db", "upgrade", "-c", str(config_path)],
        check=True,
        cwd=ROOT,
        env=broker_env(**env),
        capture_output=True,
        timeout=120,
    )


class BrokerProcess:
    """``python -m broker.cli serve -c CONFIG --port PORT`` until the context exits (SIGINT, then wait)."""

    def __init__(
        self, config_path: Path, *, port: int | None = None, workers: int = 1, scheme: str = "http", **env: str
    ) -> None:
        self.port = port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.command = [
            sys.executable,
            "-m",
            "broker.cli",
            "serve",
            "-c",
            str(config_path),
            "--port",
            str(self.port),
            "--workers",
            str(workers),
        ]
        self.env = broker_env(**env)
        self.process: subprocess.Popen[str] | None = None
        self.output = ""

    def __enter__(self) -> Self:
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            wait_for_port(self.port, timeout=60, process=self.process)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> str:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
            try:
                out, _ = self.process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                out, _ = self.process.communicate(timeout=10)
            self.output = out or ""
        return self.output

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
