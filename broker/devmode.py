"""`broker dev`: the whole broker on a laptop, offline, loudly marked as dev mode.

SQLite under a local data folder, a demo break-glass account (password and TOTP secret kept in that folder,
readable only by you), a workload issuer for trying token exchange (``broker.oauth.dev_issuer``), the console
landing page that stands in for AWS's console (``broker.web.dev``), and moto's AWS emulator (STS and IAM, from
the `dev` extra) as a child process at ``aws.sts_endpoint_url``, with every configured role created in it, so
credentials, the AWS CLI and revocation all work against it. With ``--with-ldap``, a demo directory too
(Debian's slapd as a child process, ``broker.dev_directory``) so LDAP sign-in can be tried. The start banner
prints how to use each.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console

from broker.connectors.local import hash_password
from broker.errors import ConfigError
from broker.mfa import totp
from broker.settings import Settings, display_database_url, load_settings, read_yaml
from broker.web.dev import FEDERATION_PATH

DEMO_USER = "demo"
DEMO_EMAIL = "demo@example.test"
DEFAULT_DATA_DIR = Path("var/dev")
DEFAULT_CONFIG = Path("config/dev.yaml")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _demo_account(data_dir: Path) -> dict[str, str]:
    """Create once, then reuse, the demo account's password and TOTP secret (file mode 0600)."""
    path = data_dir / "demo-account.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored
    account = {"password": secrets.token_urlsafe(12), "totp_secret": totp.new_secret()}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(account, handle)
    return account


def _end_with_parent() -> None:  # pragma: no cover (runs in the child between fork and exec)
    """Linux: the emulator gets SIGTERM when `broker dev` dies, even by SIGKILL (prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def start_sts_emulator(port: int) -> subprocess.Popen[bytes]:
    """moto's server on loopback; raise a clear error if the `dev` extra is not installed."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        raise SystemExit("The local STS emulator needs the dev extra: pip install -e '.[dev]'") from None
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_end_with_parent if sys.platform.startswith("linux") else None,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"The local STS emulator exited at start (is port {port} free?).")
        if _listening("127.0.0.1", port):
            return process
        time.sleep(0.1)
    process.kill()
    raise SystemExit("The local STS emulator did not start within 20 seconds.")


def _emulator_port(endpoint: str) -> int | None:
    """The port of a plain-HTTP loopback endpoint (one `broker dev` may run the emulator on), else None."""
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or parts.hostname not in {"127.0.0.1", "localhost"}:
        return None
    return parts.port or 80


def dev_settings(
    config: Path,
    data_dir: Path,
    port: int,
    sts_endpoint: str | None,
    account: dict[str, str],
    *,
    own_db: bool,
    directory: dict[str, Any] | None = None,
) -> Settings:
    from broker.oauth import dev_issuer

    data: dict[str, Any] = read_yaml(config)
    data["mode"] = "dev"
    # localhost, not 127.0.0.1: a WebAuthn relying party ID must be a domain name.
    public = f"http://localhost:{port}"
    data["public_url"] = public
    if own_db or not data.get("database_url"):
        data["database_url"] = f"sqlite:///{(data_dir / 'broker.db').resolve()}"
    aws = dict(data.get("aws") or {})
    if sts_endpoint:
        aws["sts_endpoint_url"] = sts_endpoint
    federation = aws.get("federation_endpoint")
    if not federation or str(federation).endswith(FEDERATION_PATH):
        aws["federation_endpoint"] = public + FEDERATION_PATH
    data["aws"] = aws
    oauth = dict(data.get("oauth") or {})
    oauth["workload_issuers"] = [
        dev_issuer.issuer_config(data_dir) if issuer.get("name") == dev_issuer.NAME else issuer
        for issuer in oauth.get("workload_issuers") or []
    ]
    data["oauth"] = oauth
    stores = list(data.get("identity_stores") or [])
    for store in stores:
        if store.get("type") == "local" and store.get("name") == "breakglass":
            store["accounts"] = [
                {
                    "username": DEMO_USER,
                    "password_hash": hash_password(account["password"]),
                    "totp_secret": account["totp_secret"],
                    "email": DEMO_EMAIL,
                    "groups": ["engineering", "admins"],
                }
            ]
    if directory is not None:
        stores.append(directory)
    data["identity_stores"] = stores
    return load_settings(None, **data)


@dataclass(frozen=True)
class Guide:
    """What the start banner prints: how to reach each part of the dev broker."""

    settings: Settings
    config: Path
    data_dir: Path
    own_db: bool
    sts_endpoint: str
    emulator_started: bool

    def operator_prefix(self) -> str:
        """Environment for operator commands when this run differs from what ``-c config`` says."""
        raw = read_yaml(self.config)
        env = []
        if self.own_db:
            env.append(f"BROKER_DATABASE_URL={shlex.quote(self.settings.database_url)}")
        elif os.environ.get("BROKER_DATABASE_URL"):
            # What the operator set (perhaps an env:/file: reference), never the resolved URL and its password.
            env.append(f"BROKER_DATABASE_URL={shlex.quote(os.environ['BROKER_DATABASE_URL'])}")
        if (raw.get("aws") or {}).get("sts_endpoint_url") != self.sts_endpoint:
            env.append(f"BROKER_AWS__STS_ENDPOINT_URL={self.sts_endpoint}")
        return " ".join(env) + (" " if env else "")

    def lines(self, account: dict[str, str]) -> list[str]:
        url = self.settings.public_url
        secret = account["totp_secret"]
        prefix = self.operator_prefix()
        config = shlex.quote(str(self.config))
        data_dir = "" if self.data_dir == DEFAULT_DATA_DIR else f" --data-dir {shlex.quote(str(self.data_dir))}"
        exchange = (
            f"curl -s {url}/oauth2/token -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange "
            "-d subject_token_type=urn:ietf:params:oauth:token-type:jwt "
            '-d subject_token="$(broker dev-token' + data_dir + ')" '
            "-d requested_token_type=urn:identity-broker:params:oauth:token-type:aws-credentials "
            "-d audience=dev-deployer"
        )
        started = " (moto, started by broker dev)" if self.emulator_started else " (already running)"
        here = os.path.dirname(sys.executable)
        activate = (
            []
            if shutil.which("broker") == shutil.which("broker", path=here)
            else [f"(In another terminal, first: . {shlex.quote(os.path.dirname(here))}/bin/activate)"]
        )
        return [
            "Placeholder secrets, plain HTTP, local data only.",
            "",
            f"Broker:        {url}   (open this URL; security keys need localhost, not 127.0.0.1)",
            f"AWS emulator:  {self.sts_endpoint}{started}: STS and IAM",
            f"Database:      {display_database_url(self.settings.database_url)}",
            "",
            "Demo break-glass account (sign in at the broker's /login page):",
            f"  username:    {DEMO_USER}",
            f"  password:    {account['password']}",
            f"  TOTP secret: {account['totp_secret']}",
            f"  otpauth URI: {totp.provisioning_uri(secret, account=DEMO_USER, issuer='broker-dev')}",
            f'  code now:    {totp.current_code(secret, now=time.time())}   (later: python -c "import pyotp; '
            f"print(pyotp.TOTP('{account['totp_secret']}').now())\")",
            "",
            *activate,
            "AWS CLI and SDKs (profiles point at the emulator, with a region):",
            f"  broker login --url {url}",
            f"  broker configure-aws --url {url}",
            "  aws sts get-caller-identity --profile dev-readonly",
            "  broker exec -r dev-readonly -- aws sts get-caller-identity",
            "",
            "Token exchange (a workload JWT from the dev issuer, for role dev-deployer):",
            f"  {exchange}",
            "",
            "Operator commands (same database and emulator):",
            f"  {prefix}broker audit verify -c {config}",
            f"  {prefix}broker requests list -c {config}      (request dev-oncall at {url}/requests)",
            f"  {prefix}broker requests approve ID --as dev-operator -c {config}",
            f"  {prefix}broker revoke principal {DEMO_EMAIL} -r 'trying it' -c {config}",
            f"  {prefix}broker policy explain -c {config} --store breakglass --subject {DEMO_USER} "
            "--group engineering --mfa mfa",
        ]


def _print_problems(console: Console, config: Path, exc: ConfigError) -> None:
    console.print(f"Configuration {config} is not valid:", style="red", markup=False)
    for where, problem in exc.problems:
        console.print(f"  {where}: {problem}", markup=False, highlight=False, soft_wrap=True)


def _stop_on_sigterm() -> None:
    """SIGTERM ends `broker dev` like Ctrl+C does, so the emulator is stopped too.

    uvicorn restores the previous handler after its graceful shutdown and raises the signal again; with the
    default handler the process would die before its ``finally`` could stop the emulator.
    """

    def _exit(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def start_demo_directory(data_dir: Path) -> tuple[Any, dict[str, Any]]:
    """slapd with the demo people (fresh on every start), and the identity store that reaches it."""
    from broker.dev_directory import (
        DEMO_SERVICE_DN,
        DEMO_SUFFIX,
        DirectoryUnavailable,
        Slapd,
        demo_ldif,
    )

    folder = data_dir / "ldap"
    shutil.rmtree(folder, ignore_errors=True)
    service_password = secrets.token_urlsafe(18)
    slapd = Slapd(folder, suffix=DEMO_SUFFIX, root_password=secrets.token_urlsafe(18), ldif=demo_ldif(service_password))
    try:
        slapd.start()
    except DirectoryUnavailable as exc:
        raise SystemExit(f"The demo directory did not start: {exc}") from None
    store = {
        "type": "ldap",
        "name": "demo-ldap",
        "display_name": "Demo directory (LDAP)",
        # Plain LDAP on loopback is allowed in dev mode only; production needs ldaps:// or start_tls.
        "url": slapd.url,
        "bind_dn": DEMO_SERVICE_DN,
        "bind_password": service_password,
        "user_base_dn": f"ou=people,{DEMO_SUFFIX}",
        "user_filter": "(objectClass=inetOrgPerson)",
        "login_attributes": ["uid", "mail"],
        "groups": {"source": "member_of", "nested": True},
        "domains": ["example.com"],
    }
    return slapd, store


def directory_lines(directory: Any) -> list[str]:
    from broker.dev_directory import DEMO_PASSWORDS

    return [
        "",
        f"Demo directory (slapd at {directory.url}), sign in with username or e-mail and password:",
        *(f"  {user:<12} {user}@example.com   password: {pw}" for user, pw in DEMO_PASSWORDS.items()),
        "  Roles that need MFA ask you to add an authenticator app at /mfa after signing in.",
    ]


def run(*, port: int, data_dir: Path | None, config: Path, console: Console, with_ldap: bool = False) -> None:
    import uvicorn

    from broker import logs
    from broker.app import create_app
    from broker.aws import emulator as aws_emulator
    from broker.store import db

    own_db = data_dir is not None
    data_dir = data_dir if data_dir is not None else DEFAULT_DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    account = _demo_account(data_dir)
    try:
        raw_aws = read_yaml(config).get("aws") or {}
    except ConfigError as exc:
        _print_problems(console, config, exc)
        raise SystemExit(2) from None
    sts_endpoint = os.environ.get("BROKER_AWS__STS_ENDPOINT_URL") or raw_aws.get("sts_endpoint_url")
    emulator = None
    _stop_on_sigterm()
    if not sts_endpoint:
        sts_endpoint = f"http://127.0.0.1:{_free_port()}"
    emulator_port = _emulator_port(sts_endpoint)
    if emulator_port is not None and not _listening("127.0.0.1", emulator_port):
        emulator = start_sts_emulator(emulator_port)
    aws_emulator.use_emulator_keys()
    directory = None
    try:
        directory_store = None
        if with_ldap:
            directory, directory_store = start_demo_directory(data_dir)
        try:
            settings = dev_settings(
                config, data_dir, port, sts_endpoint, account, own_db=own_db, directory=directory_store
            )
        except ConfigError as exc:
            _print_problems(console, config, exc)
            raise SystemExit(2) from None
        db.upgrade(settings.database_url)
        if emulator_port is not None:
            aws_emulator.ensure_roles(settings.aws, list(settings.roles))
        logs.configure(settings.log_level, json=False)
        guide = Guide(settings, config, data_dir, own_db, sts_endpoint, emulator is not None)
        console.rule("[bold yellow]broker dev: DEV MODE, not for production[/bold yellow]")
        for line in guide.lines(account) + (directory_lines(directory) if directory is not None else []):
            console.print(line, soft_wrap=True, highlight=False, markup=False)
        console.rule()
        sys.stdout.flush()
        uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False)
    finally:
        if emulator is not None:
            emulator.terminate()
            emulator.wait(timeout=10)
        if directory is not None:
            directory.stop()
