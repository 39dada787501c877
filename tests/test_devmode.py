"""`broker dev` from a fresh start, as a new user takes it: only the commands its banner prints.

Real peers: `broker dev` as a subprocess (with the moto AWS emulator it starts), Debian's Chromium for the
portal, the `broker` and `aws` programs of this virtualenv in a shell with no AWS keys and no AWS settings,
curl for token exchange. The operator commands are run exactly as the banner prints them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import psutil
import pyotp
import pytest
from playwright.sync_api import Browser, expect

from tests.support.cli_broker import hidden_fields
from tests.support.portal import login_local
from tests.support.processes import broker_env, end_process_group, free_port, wait_for_port

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Dev:
    process: subprocess.Popen[str]
    banner: str
    url: str
    emulator: str
    env: dict[str, str]
    home: Path
    lines: list[str] = field(default_factory=list)

    def printed(self, start: str) -> str:
        """The command line of the banner that starts with ``start`` (after any environment prefix)."""
        for line in self.banner.splitlines():
            command = line.strip()
            if re.sub(r"^(\w+=\S+ )*", "", command).startswith(start):
                return command.split("   (", 1)[0].split("      (", 1)[0]
        raise AssertionError(f"the banner prints no `{start}` command:\n{self.banner}")

    def shell(self, command: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["bash", "-c", command], env=self.env, capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        if check:
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        return result

    def totp(self, offset_steps: int = 0) -> str:
        secret = re.search(r"TOTP secret:\s+([A-Z2-7]+)", self.banner)
        assert secret
        return pyotp.TOTP(secret.group(1)).at(time.time() + 30 * offset_steps)

    @property
    def password(self) -> str:
        match = re.search(r"password:\s+(\S+)", self.banner)
        assert match
        return match.group(1)


def user_env(home: Path) -> dict[str, str]:
    """A new user's shell: no AWS keys, region or endpoint; the helper's and AWS CLI's files under ``home``."""
    values = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "BROKER_")) and k not in {"DISPLAY", "WAYLAND_DISPLAY", "PYTHONWARNINGS"}
    }
    values.update(
        BROKER_CLIENT_HOME=str(home / "helper"),
        BROKER_CLIENT_KEYRING="file",
        AWS_CONFIG_FILE=str(home / "aws" / "config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "aws" / "credentials"),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return values


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    home = tmp_path_factory.mktemp("firsthour")
    port, emulator_port = free_port(), free_port()
    env = user_env(home)
    # Another emulator port than config/dev.yaml's, so tests run beside each other: the banner must say so.
    server_env = {**env, "BROKER_AWS__STS_ENDPOINT_URL": f"http://127.0.0.1:{emulator_port}", "COLUMNS": "300"}
    process = subprocess.Popen(
        [str(BIN / "broker"), "dev", "--port", str(port), "--data-dir", str(home / "dev")],
        cwd=ROOT,
        env=server_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    emulators: list[int] = []
    try:
        wait_for_port(port, process=process, timeout=90)
        emulators = children(process.pid)
        assert process.stdout is not None
        banner = ""
        while "policy explain" not in banner:
            line = process.stdout.readline()
            assert line, banner
            banner += line
        url = re.search(r"Broker:\s+(http://\S+)", banner)
        emulator = re.search(r"AWS emulator:\s+(http://\S+)", banner)
        assert url and emulator
        yield Dev(process, banner, url.group(1), emulator.group(1), env, home)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in emulators:  # only if the SIGTERM test failed: do not leave the emulator behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def children(pid: int) -> list[int]:
    """The process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def login_device(dev: Dev, web: httpx.Client) -> str:
    """`broker login --device` as printed (plus --device: no browser on this machine), confirmed on the web."""
    command = dev.printed("broker login").split()
    process = subprocess.Popen(
        [*command, "--device"], env=dev.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
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
    return seen + rest


def emulator_iam(dev: Dev) -> Any:
    return boto3.client(
        "iam",
        endpoint_url=dev.emulator,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",  # moto accepts any key
    )


def test_banner_is_plain_and_complete(dev: Dev) -> None:
    assert "DEV MODE" in dev.banner
    assert dev.url.startswith("http://localhost:")  # a WebAuthn RP ID must be a domain name
    # The operator commands carry what differs from config/dev.yaml (this run's database and emulator).
    verify = dev.printed("broker audit verify")
    assert "BROKER_DATABASE_URL=" in verify and f"BROKER_AWS__STS_ENDPOINT_URL={dev.emulator}" in verify
    assert "-c config/dev.yaml" in verify


def test_first_hour_portal_cli_exchange_request_revoke_audit_explain(dev: Dev, chromium: Browser) -> None:
    # 1. The portal in Chromium: sign in, open the console (the dev landing page), add a security key.
    context = chromium.new_context()
    try:
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("WebAuthn.enable")
        cdp.send(
            "WebAuthn.addVirtualAuthenticator",
            {
                "options": {
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": True,
                    "hasUserVerification": True,
                    "isUserVerified": True,
                }
            },
        )
        page.goto(dev.url + "/login")
        page.get_by_label("Username").fill("demo")
        page.get_by_label("Password").fill(dev.password)
        page.get_by_label("Authenticator code").fill(dev.totp())
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Your AWS access")).to_be_visible()
        readonly = page.locator('li[data-role="dev-readonly"]')
        readonly.get_by_role("button", name="Open console").click()
        expect(page.get_by_role("heading", name="You are in the AWS console (dev stand-in)")).to_be_visible()
        expect(page.get_by_test_id("console-arn")).to_have_text(
            "arn:aws:sts::123456789012:assumed-role/DevReadOnly/demo"
        )
        page.goto(dev.url + "/mfa")
        page.get_by_label("Name").first.fill("dev key")
        page.get_by_role("button", name="Add security key").click()
        expect(page.locator('li[data-factor="webauthn"]').filter(has_text="dev key")).to_have_count(1)

        # An access request for the role that needs approval, from the portal.
        page.goto(dev.url + "/")
        oncall = page.locator('li[data-role="dev-oncall"]')
        oncall.get_by_label("Reason").fill("trying the request flow")
        oncall.get_by_role("button", name="Request access").click()
        expect(page.get_by_text("trying the request flow").first).to_be_visible()
    finally:
        context.close()

    # 2. The CLI: log in (device code confirmed in a second signed-in session), configure the AWS CLI.
    web = httpx.Client(base_url=dev.url, timeout=30)
    code = dev.totp(1)
    signed_in = login_local(web, store="breakglass", username="demo", password=dev.password, code=code)
    assert signed_in.status_code == 303
    assert "Signed in" in login_device(dev, web)
    # The same code again: the page says what happened and the one next step.
    with httpx.Client(base_url=dev.url, timeout=30) as again:
        replay = login_local(again, store="breakglass", username="demo", password=dev.password, code=code)
        assert replay.status_code == 400
        assert "This authenticator code was already used. Wait for the next code" in replay.text
        assert "Back to your roles" not in replay.text and 'href="/login">Sign in</a>' in replay.text
    configured = dev.shell(dev.printed("broker configure-aws"))
    assert "dev-readonly" in configured.stderr
    aws_config = (dev.home / "aws" / "config").read_text()
    assert "region = us-east-1" in aws_config and f"endpoint_url = {dev.emulator}" in aws_config

    status = json.loads(dev.shell(f"broker status --json --url {dev.url}").stdout)
    assert status["principal"] == "demo@example.test"
    assert {r["name"]: r["usable"] for r in status["roles"]}["dev-readonly"] is True

    # The real AWS CLI with only --profile: credentials, region and endpoint come from the profile.
    who = json.loads(dev.shell(dev.printed("aws sts get-caller-identity --profile dev-readonly")).stdout)
    assert who["Arn"] == "arn:aws:sts::123456789012:assumed-role/DevReadOnly/demo"
    via_exec = json.loads(dev.shell(dev.printed("broker exec -r dev-readonly")).stdout)
    assert via_exec["Arn"] == who["Arn"]

    # 3. Token exchange with a workload token from the dev issuer, exactly as printed.
    assert shutil.which("curl"), "curl is needed for the printed token-exchange command"
    exchanged = json.loads(dev.shell(dev.printed("curl -s")).stdout)
    assert exchanged["issued_token_type"] == "urn:identity-broker:params:oauth:token-type:aws-credentials"
    workload = boto3.client(
        "sts",
        endpoint_url=dev.emulator,
        region_name="us-east-1",
        aws_access_key_id=exchanged["aws_credentials"]["AccessKeyId"],
        aws_secret_access_key=exchanged["aws_credentials"]["SecretAccessKey"],
        aws_session_token=exchanged["aws_credentials"]["SessionToken"],
    ).get_caller_identity()
    assert workload["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/DevDeployer/")

    # 4. Approve the request with the printed operator command; the role then works in the AWS CLI.
    listing = dev.printed("broker requests list").replace("broker requests list", "broker requests list --json")
    pending = [r for r in json.loads(dev.shell(listing).stdout) if r["status"] == "pending"]
    assert [r["role"] for r in pending] == ["dev-oncall"]
    approve = dev.printed("broker requests approve").replace(" ID ", f" {pending[0]['id']} ")
    assert "Approved" in dev.shell(approve).stdout
    oncall = json.loads(dev.shell("aws sts get-caller-identity --profile dev-oncall").stdout)
    assert oncall["Arn"] == "arn:aws:sts::123456789012:assumed-role/DevOnCall/demo"

    # 5. Revocation: the deny policy lands on the roles in the emulator's IAM.
    revoked = json.loads(dev.shell(dev.printed("broker revoke principal")).stdout)
    assert "arn:aws:iam::123456789012:role/DevReadOnly" in revoked["aws"]["applied"] and not revoked["aws"]["failed"]
    policy = emulator_iam(dev).get_role_policy(RoleName="DevReadOnly", PolicyName="BrokerRevokedSessions")
    document = policy["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    assert document["Statement"][0]["Condition"]["StringEquals"] == {"aws:SourceIdentity": "demo@example.test"}

    # Piped tables keep whole values (no `ASIA...` cut at 80 columns).
    issuances = dev.shell(dev.printed("broker audit verify").replace("broker audit verify", "broker issuances list"))
    assert exchanged["aws_credentials"]["AccessKeyId"] in issuances.stdout

    # 6. The audit chain, and the policy simulator, as printed.
    verified = dev.shell(dev.printed("broker audit verify"))
    assert "Audit chain intact" in verified.stdout
    explained = dev.shell(dev.printed("broker policy explain")).stdout
    assert "dev-readonly: USABLE (granted)" in explained
    assert "dev-oncall: visible, not usable (request_required)" in explained
    assert "[ ] groups any of ['admins']" in explained

    # No Authlib deprecation notice (or any warning) in the user's terminal.
    assert "Warning" not in verified.stderr + configured.stderr

    # 7. Disabling the person: their open portal says so on the next page, at once.
    disable = dev.printed("broker audit verify").replace(
        "broker audit verify", "broker principals disable demo@example.test -r 'leaving'"
    )
    dev.shell(disable)
    page = web.get("/", headers={"Accept": "text/html"})
    web.close()
    assert page.status_code == 403 and "<h1>This account is disabled</h1>" in page.text


def test_operator_commands_refuse_a_missing_database(dev: Dev, tmp_path: Path) -> None:
    missing = tmp_path / "nothing" / "broker.db"
    result = dev.shell(f"BROKER_DATABASE_URL=sqlite:///{missing} broker audit verify -c config/dev.yaml", check=False)
    assert result.returncode == 2
    assert f"there is no database file at {missing}" in result.stderr and "broker dev" in result.stderr
    assert not missing.exists() and not missing.parent.exists()


def test_sigterm_stops_broker_dev_and_its_emulator(dev: Dev) -> None:
    port = int(dev.emulator.rsplit(":", 1)[1])
    assert _listening(port)
    dev.process.send_signal(signal.SIGTERM)
    dev.process.wait(timeout=30)
    deadline = time.monotonic() + 15
    while _listening(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _listening(port)


def test_the_emulator_ends_when_broker_dev_is_killed(tmp_path: Path) -> None:
    """SIGKILL gives `broker dev` no chance to clean up: the emulator must end by itself."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "dev", "--port", str(port), "--data-dir", str(tmp_path / "dev")],
        cwd=ROOT,
        env=broker_env(BROKER_AWS__STS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    emulators: list[psutil.Process] = []
    try:
        wait_for_port(port, process=process, timeout=60)
        emulators = [
            child for child in psutil.Process(process.pid).children() if "moto.server" in " ".join(child.cmdline())
        ]
        assert len(emulators) == 1
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        _, alive = psutil.wait_procs(emulators, timeout=10)
        assert alive == [], "moto outlived `broker dev`"
    finally:
        for emulator in emulators:
            if emulator.is_running():
                emulator.kill()
        end_process_group(process)


def test_dev_settings_resolve_a_database_url_reference_that_the_banner_never_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from broker.devmode import Guide, _demo_account, dev_settings

    password = "dev-database-password-never-printed"
    url = f"postgresql://broker:{password}@127.0.0.1:5432/broker"
    config = tmp_path / "dev.yaml"
    config.write_text(
        yaml.safe_dump(yaml.safe_load((ROOT / "config/dev.yaml").read_text()) | {"database_url": "env:DEV_DB_URL"})
    )
    monkeypatch.setenv("DEV_DB_URL", url)
    monkeypatch.setenv("BROKER_DATABASE_URL", "env:DEV_DB_URL")
    account = _demo_account(tmp_path)
    emulator = "http://127.0.0.1:8001"
    settings = dev_settings(config, tmp_path, 8000, emulator, account, own_db=False)
    assert settings.database_url == url
    banner = "\n".join(Guide(settings, config, tmp_path, False, emulator, False).lines(account))
    assert password not in banner
    assert "Database:      postgresql://broker:***@127.0.0.1:5432/broker" in banner
    # Operator commands get the reference the operator set, and resolve it themselves.
    assert "BROKER_DATABASE_URL=env:DEV_DB_URL broker audit verify" in banner
