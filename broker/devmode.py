"""`broker dev`: the whole broker on a laptop, offline, loudly marked as dev mode.

SQLite under a local data folder, a demo break-glass account (password and TOTP secret kept in that
folder, readable only by you), and, when no STS endpoint is configured, moto's STS emulator as a child
process (from the `dev` extra) so the credentials issued work against it. With ``--with-ldap``, a demo
directory too (Debian's slapd as a child process, ``broker.dev_directory``) so LDAP sign-in can be tried.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyotp
from rich.console import Console

from broker.connectors.local import hash_password
from broker.errors import ConfigError
from broker.settings import Settings, load_settings, read_yaml

DEMO_USER = "demo"
# linux/prctl.h: deliver a signal to this process when its parent exits.
_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _demo_account(data_dir: Path) -> dict[str, str]:
    """Create once, then reuse, the demo account's password and TOTP secret (file mode 0600)."""
    path = data_dir / "demo-account.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored
    account = {"password": secrets.token_urlsafe(12), "totp_secret": pyotp.random_base32()}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(account, handle)
    return account


def _end_with_parent() -> None:
    """In the emulator's process, before it runs: ask Linux for SIGTERM when `broker dev` ends, however it
    ends (a signal, a crash, a configuration error), so the emulator never outlives it. Elsewhere a no-op:
    `broker dev` still stops it on a normal exit."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return


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
        preexec_fn=_end_with_parent,  # one prctl call in the child: no locks, nothing to deadlock on
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("The local STS emulator did not start within 20 seconds.")


def dev_settings(
    config: Path,
    data_dir: Path,
    port: int,
    sts_endpoint: str | None,
    account: dict[str, str],
    directory: dict[str, Any] | None = None,
) -> Settings:
    data: dict[str, Any] = read_yaml(config)
    data["mode"] = "dev"
    data["public_url"] = f"http://127.0.0.1:{port}"
    data.setdefault("database_url", f"sqlite:///{(data_dir / 'broker.db').resolve()}")
    aws = dict(data.get("aws") or {})
    if sts_endpoint:
        aws["sts_endpoint_url"] = sts_endpoint
    data["aws"] = aws
    stores = list(data.get("identity_stores") or [])
    for store in stores:
        if store.get("type") == "local" and store.get("name") == "breakglass":
            store["accounts"] = [
                {
                    "username": DEMO_USER,
                    "password_hash": hash_password(account["password"]),
                    "totp_secret": account["totp_secret"],
                    "email": "demo@example.test",
                    "groups": ["engineering", "admins"],
                }
            ]
    if directory is not None:
        stores.append(directory)
    data["identity_stores"] = stores
    return load_settings(None, **data)


def start_demo_directory(data_dir: Path) -> tuple[Any, dict[str, Any]]:
    """slapd with the demo people (fresh on every start), and the identity store that reaches it."""
    import shutil

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


def run(*, port: int, data_dir: Path, config: Path, console: Console, with_ldap: bool = False) -> None:
    import uvicorn

    from broker import logs
    from broker.app import create_app
    from broker.store import db

    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    account = _demo_account(data_dir)
    emulator = None
    raw_aws = (read_yaml(config).get("aws") or {}) if config.exists() else {}
    sts_endpoint = os.environ.get("BROKER_AWS__STS_ENDPOINT_URL") or raw_aws.get("sts_endpoint_url")
    if not sts_endpoint:
        emulator_port = _free_port()
        emulator = start_sts_emulator(emulator_port)
        sts_endpoint = f"http://127.0.0.1:{emulator_port}"
        # moto accepts any key; these are not credentials and grant nothing anywhere.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "dev-emulator")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "dev-emulator")
    directory, directory_store = start_demo_directory(data_dir) if with_ldap else (None, None)
    try:
        settings = dev_settings(config, data_dir, port, sts_endpoint, account, directory_store)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        if directory is not None:
            directory.stop()
        raise SystemExit(2) from None
    db.upgrade(settings.database_url)
    logs.configure(settings.log_level, json=False)
    totp = pyotp.TOTP(account["totp_secret"])
    console.rule("[bold yellow]broker dev: DEV MODE, not for production[/bold yellow]")
    lines = [
        "Placeholder secrets, plain HTTP, local data only.",
        "",
        f"Broker:        {settings.public_url}",
        f"STS emulator:  {sts_endpoint}{' (moto, started by broker dev)' if emulator else ''}",
        f"Database:      {settings.database_url}",
        "",
        "Demo break-glass account (sign in at the broker's /login page):",
        f"  username:    {DEMO_USER}",
        f"  password:    {account['password']}",
        f"  TOTP secret: {account['totp_secret']}",
        f"  otpauth URI: {totp.provisioning_uri(name=DEMO_USER, issuer_name='broker-dev')}",
        f'  code now:    {totp.now()}   (later: python -c "import pyotp; '
        f"print(pyotp.TOTP('{account['totp_secret']}').now())\")",
    ]
    if directory is not None:
        from broker.dev_directory import DEMO_PASSWORDS

        lines += [
            "",
            f"Demo directory (slapd at {directory.url}), sign in with username or e-mail and password:",
            *(f"  {user:<12} {user}@example.com   password: {pw}" for user, pw in DEMO_PASSWORDS.items()),
            "  Roles that need MFA ask you to add an authenticator app at /mfa after signing in.",
        ]
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    console.rule()
    sys.stdout.flush()
    # uvicorn re-raises the SIGTERM it stopped on once it has shut down; with the default handler that would
    # end the process before the children (STS emulator, directory) are stopped below.
    signal.signal(signal.SIGTERM, _exit)
    try:
        uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False)
    finally:
        if emulator is not None:
            emulator.terminate()
            emulator.wait(timeout=10)
        if directory is not None:
            directory.stop()
