"""Running the ``broker`` command as a process, as an operator would, and a minimal configuration for it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import SECRET
from tests.support.processes import broker_env

ROOT = Path(__file__).resolve().parent.parent.parent


def broker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env=env or broker_env(),
    )


def write_config(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "broker.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "mode": "production",
                "public_url": "https://broker.example.com",
                "database_url": db_url,
                "secret_key": SECRET,
            }
        )
    )
    return path
