"""Configuration files for tests of ``load_settings`` and ``broker config check``: a minimal valid one, a writer,
and the problems a file yields by YAML path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.errors import ConfigError
from broker.settings import load_settings

GOOD_SECRET = "a-real-secret-value-with-enough-entropy-0123456789"
ROOT = Path(__file__).resolve().parent.parent.parent


def write(tmp_path: Path, data: dict[str, Any], name: str = "broker.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def good() -> dict[str, Any]:
    return {
        "public_url": "https://broker.example.com",
        "secret_key": GOOD_SECRET,
        "roles": [
            {"name": "ro", "role_arn": "arn:aws:iam::123456789012:role/ReadOnly", "grant": [{"groups": ["eng"]}]}
        ],
    }


def problems(tmp_path: Path, data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, data))
    return dict(info.value.problems)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
