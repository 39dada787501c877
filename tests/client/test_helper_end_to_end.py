"""From `broker login` to `aws s3 ls --profile readonly`, with the real AWS CLI and boto3.

Peers: the broker on a real socket, moto's server (STS and S3), the `broker` and `aws` programs of this
virtualenv as subprocesses (configured by `broker configure-aws`), and the helper's files in a temporary
BROKER_CLIENT_HOME. Nothing is mocked; no key is ever pasted.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.support.cli_broker import CliBroker, cli_broker, hidden_fields
from tests.support.processes import spawned

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def live(make_config: Callable[..., dict[str, Any]]) -> Iterator[CliBroker]:
    with cli_broker(make_config()) as running:
        yield running


@pytest.fixture
def env(tmp_path: Path, sts_endpoint: str) -> dict[str, str]:
    """A user's shell: helper files and AWS config in temporary folders, no AWS keys, no display."""
    values = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "BROKER_")) and k not in {"DISPLAY", "WAYLAND_DISPLAY"}
    }
    values.update(
        BROKER_CLIENT_HOME=str(tmp_path / "helper"),
        BROKER_CLIENT_KEYRING="file",
        AWS_CONFIG_FILE=str(tmp_path / "aws" / "config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws" / "credentials"),
        AWS_ENDPOINT_URL_STS=sts_endpoint,
        AWS_ENDPOINT_URL_S3=sts_endpoint,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return values


class Shell:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.stderr: list[str] = []

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / args[0]), *args[1:]], env=self.env, capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        self.stderr.append(result.stderr)
        if check:
            assert result.returncode == 0, result.stderr
        return result


def login_device(live: CliBroker, shell: Shell, web: httpx.Client) -> str:
    """`broker login --device`, confirmed in a signed-in browser; returns what the command printed."""
    with spawned(
        [str(BIN / "broker"), "login", "--device", "--url", live.url],
        env=shell.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stderr is not None
        seen = ""
        while (match := re.search(r"\b([B-Z]{4}-[B-Z]{4})\b", seen)) is None:
            line = process.stderr.readline()
            assert line, f"broker login ended early: {seen}"
            seen += line
        page = web.get("/device", params={"user_code": match.group(1)})
        assert web.post("/device", data={**hidden_fields(page.text), "decision": "allow"}).status_code == 200
        _, rest = process.communicate(timeout=60)
    assert process.returncode == 0, seen + rest
    shell.stderr.append(seen + rest)
    return seen + rest


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_login_configure_aws_cli_and_boto3(
    live: CliBroker, env: dict[str, str], tmp_path: Path, sts_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shell = Shell(env)
    printed = login_device(live, shell, live.browser())
    assert "Signed in" in printed and "alice@example.com" in printed and "(mfa sign-in)" in printed

    # configure-aws keeps the user's own profiles and points credential_process at this virtualenv's broker.
    config = tmp_path / "aws" / "config"
    config.parent.mkdir()
    config.write_text("[profile mine]\nregion = eu-west-1\n")
    shell.run("broker", "configure-aws", "--url", live.url, "--region", "us-east-1")
    text = config.read_text()
    assert text.startswith("[profile mine]\nregion = eu-west-1\n")
    process = ROOT / "broker" / "client" / "process.py"
    # The quickest launch: this virtualenv's Python, isolated and without site, on the helper's own file.
    assert f"credential_process = {sys.executable} -I -S {process} --role readonly --url {live.url}" in text

    # The real AWS CLI: who am I?
    who = json.loads(shell.run("aws", "sts", "get-caller-identity", "--profile", "readonly").stdout)
    assert who["Arn"] == "arn:aws:sts::123456789012:assumed-role/ReadOnly/alice"

    # ... and S3 on the same emulator, with the same cached credentials (no second issuance).
    boto3.client(
        "s3", endpoint_url=sts_endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    ).create_bucket(Bucket="team-bucket")
    listing = shell.run("aws", "s3", "ls", "--profile", "readonly")
    assert "team-bucket" in listing.stdout
    assert len(live.issuances()) == 1

    # boto3, through the same profile, in this process.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    session = boto3.Session(profile_name="readonly")
    arn = session.client("sts", endpoint_url=sts_endpoint).get_caller_identity()["Arn"]
    assert arn == "arn:aws:sts::123456789012:assumed-role/ReadOnly/alice"

    # Private files only.
    home = Path(env["BROKER_CLIENT_HOME"])
    [cached] = list((home / "cache").glob("*.cred"))
    for path in (cached, home / "config" / "cache.key", home / "config" / "refresh-tokens.json"):
        assert mode(path) == 0o600, path
    assert mode(home / "cache") == mode(home / "config") == 0o700
    secret = json.loads(shell.run("broker", "credential-process", "--role", "readonly").stdout)["SecretAccessKey"]
    assert secret.encode() not in cached.read_bytes()

    # `broker exec` and `broker status` work from the same sign-in.
    shown = shell.run(
        "broker", "exec", "--role", "readonly", "--", "aws", "sts", "get-caller-identity", "--region", "us-east-1"
    )
    assert "assumed-role/ReadOnly/alice" in shown.stdout
    status = shell.run("broker", "status")
    assert "alice@example.com" in status.stdout and "readonly" in status.stdout

    # Nothing secret ever reached stderr.
    refresh = json.loads((home / "config" / "refresh-tokens.json").read_text())[live.url]
    everything = "".join(shell.stderr)
    for value in (refresh, secret, "bkr_rt_", "SecretAccessKey", "SessionToken"):
        assert value not in everything


def test_expired_cache_refreshes_once_and_revocation_says_run_login(live: CliBroker, env: dict[str, str]) -> None:
    shell = Shell(env)
    web = live.browser()
    login_device(live, shell, web)
    process = ["broker", "credential-process", "--role", "readonly", "--url", live.url]
    first = shell.run(*process)
    mark = live.last_seq()
    assert shell.run(*process).stdout == first.stdout  # a cache hit: no broker call at all
    assert live.audit(mark) == []

    # Make the cached credentials nearly expired (inside the refresh margin), as time would.
    from broker.client import cache

    os.environ["BROKER_CLIENT_HOME"] = env["BROKER_CLIENT_HOME"]
    try:
        cache.write(live.url, "readonly", None, first.stdout.strip().encode(), time.time() + 60)
    finally:
        del os.environ["BROKER_CLIENT_HOME"]
    second = shell.run(*process)
    assert json.loads(second.stdout)["AccessKeyId"] != json.loads(first.stdout)["AccessKeyId"]
    events = [(e.event, e.outcome, e.reason) for e in live.audit(mark)]
    assert events == [("cli_token", "ok", "refreshed"), ("credentials", "ok", "issued")]  # exactly one refresh

    # Revoke the sign-in at the broker (as an administrator or `broker logout` elsewhere would).
    home = Path(env["BROKER_CLIENT_HOME"])
    token = json.loads((home / "config" / "refresh-tokens.json").read_text())[live.url]
    httpx.post(f"{live.url}/oauth2/revoke", data={"token": token, "client_id": "broker-cli"}).raise_for_status()
    for path in (home / "cache").glob("*.cred"):
        path.unlink()
    failed = shell.run(*process, check=False)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and "run `broker login --url" in failed.stderr
    assert token not in failed.stderr

    # logout revokes and forgets; credential-process then says how to sign in.
    login_device(live, shell, web)
    shell.run(*process)
    out = shell.run("broker", "logout", "--url", live.url)
    assert "removed 1 cached credential set" in out.stderr
    assert [e.reason for e in live.audit() if e.event == "cli_revoke"][-1] == "revoked"
    after = shell.run(*process, check=False)
    assert after.returncode == 1 and "broker login --url" in after.stderr


def test_credentials_endpoint_for_the_aws_cli_and_boto3(
    live: CliBroker, env: dict[str, str], sts_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shell = Shell(env)
    login_device(live, shell, live.browser())

    # The real AWS CLI, run by the endpoint command: the container credentials provider, no profile at all.
    wrapped = shell.run(
        "broker", "credentials-endpoint", "--role", "readonly", "--", "aws", "sts", "get-caller-identity"
    )
    assert json.loads(wrapped.stdout)["Arn"] == "arn:aws:sts::123456789012:assumed-role/ReadOnly/alice"

    # A long-running endpoint for boto3 in this process (what an SDK-based tool would use).
    server = subprocess.Popen(
        [str(BIN / "broker"), "credentials-endpoint", "--role", "readonly", "--url", live.url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        exported = dict(
            re.match(r"export (\w+)=(\S+)", server.stdout.readline()).groups()  # type: ignore[union-attr]
            for _ in range(2)
        )
        uri, token = exported["AWS_CONTAINER_CREDENTIALS_FULL_URI"], exported["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
        assert uri.startswith("http://127.0.0.1:") and uri.endswith("/role/readonly")
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(Path(env["AWS_CONFIG_FILE"]).parent / "absent"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(Path(env["AWS_CONFIG_FILE"]).parent / "absent"))
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri)
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", token)
        session = boto3.Session(region_name="us-east-1")
        assert session.get_credentials().method == "container-role"  # type: ignore[union-attr]
        arn = session.client("sts", endpoint_url=sts_endpoint).get_caller_identity()["Arn"]
        assert arn == "arn:aws:sts::123456789012:assumed-role/ReadOnly/alice"

        # Without the token, with another token, or for another role: nothing.
        assert httpx.get(uri).status_code == 401
        assert httpx.get(uri, headers={"Authorization": token[:-1] + "x"}).status_code == 401
        other = httpx.get(uri.replace("/role/readonly", "/role/admin"), headers={"Authorization": token})
        assert other.status_code == 404 and other.json()["code"] == "unknown_role"
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    # Served from the helper's cache: one issuance for the CLI run and the SDK together; no secret on stderr.
    assert len(live.issuances()) == 1
    assert token not in stderr and "SecretAccessKey" not in stderr
