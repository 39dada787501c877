"""`broker credential-process` failure modes: one line on stderr, nothing on stdout, a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.processes import broker_env, free_port

ROOT = Path(__file__).resolve().parents[2]


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = broker_env(BROKER_CLIENT_HOME=str(home), BROKER_CLIENT_KEYRING="file")
    return subprocess.run(
        [sys.executable, "-c", "from broker.entry import main; main()", "credential-process", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def test_missing_role_is_a_usage_error(tmp_path: Path) -> None:
    result = run(tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert "--role is required" in result.stderr and "usage:" in result.stderr


def test_not_signed_in_says_what_to_do(tmp_path: Path) -> None:
    result = run(tmp_path, "--role", "ro", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("broker: ")


def test_no_url_anywhere_is_explained(tmp_path: Path) -> None:
    result = run(tmp_path, "--role", "ro")
    assert result.returncode == 2 and "broker login --url" in result.stderr
