"""SimpleSAMLphp 1.19 (Debian's ``simplesamlphp``) as a real SAML IdP, served by PHP's built-in web server.

Debian's package reads its configuration from ``/etc/simplesamlphp`` unless ``SIMPLESAMLPHP_CONFIG_DIR``
names another directory, so each :class:`SimpleSamlPhp` writes its own ``config.php``, ``authsources.php``
(``exampleauth:UserPass``) and ``metadata/saml20-idp-hosted.php`` / ``saml20-sp-remote.php`` into a temporary
directory, generates the IdP's key and certificate, and runs ``php -S 127.0.0.1:PORT`` over the package's
``www`` directory. Its session cookie is ``SameSite=Lax`` without ``Secure``: plain HTTP on loopback.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

import httpx
from playwright.sync_api import Page
from sqlalchemy import select

from broker.app import create_app
from broker.settings import load_settings
from broker.store.db import Database
from broker.store.models import Principal
from tests.support.processes import LiveServer, free_port, wait_for_port
from tests.support.records import Records
from tests.support.saml_idp import cert_base64, make_keypair

SSP_STORE = "uni"
WWW = Path("/usr/share/simplesamlphp/www")
PHP = "php"
TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
# eduPerson / inetOrgPerson OIDs as SimpleSAMLphp's ``name2oid`` attribute map names them.
OID_UID = "urn:oid:0.9.2342.19200300.100.1.1"
OID_MAIL = "urn:oid:0.9.2342.19200300.100.1.3"
OID_AFFILIATION = "urn:oid:1.3.6.1.4.1.5923.1.1.1.1"
OID_ENTITLEMENT = "urn:oid:1.3.6.1.4.1.5923.1.1.1.7"

# exampleauth:UserPass accounts: "username:password" => attributes (names before the OID mapping).
USERS: dict[str, dict[str, list[str]]] = {
    "carol:carol-long-password": {
        "uid": ["carol"],
        "mail": ["carol@uni.example"],
        "eduPersonEntitlement": ["engineering"],
        "eduPersonAffiliation": ["staff"],
    },
}
PASSWORDS = {key.split(":", 1)[0]: key.split(":", 1)[1] for key in USERS}


def _php(value: object) -> str:
    """A Python literal (str, bool, int, None, list, dict) as PHP source."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, Mapping):
        return "[" + ", ".join(f"{_php(k)} => {_php(v)}" for k, v in value.items()) + "]"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_php(v) for v in value) + "]"
    raise TypeError(type(value))


@dataclass
class ServiceProvider:
    """How the IdP knows the broker (``saml20-sp-remote.php``)."""

    entity_id: str
    acs_url: str
    slo_url: str | None = None
    cert_pem: bytes | None = None
    name_id_format: str = PERSISTENT
    # The attribute whose value becomes a persistent NameID (``simplesaml.nameidattribute``), named as it
    # is after the attribute map; if the user lacks it, SimpleSAMLphp quietly falls back to a transient one.
    name_id_attribute: str | None = OID_UID
    # Release attribute names as urn:oid: (SimpleSAMLphp's name2oid map), as most federations do.
    oid_names: bool = True
    extra: dict[str, object] = field(default_factory=dict)


class SimpleSamlPhp:
    """SimpleSAMLphp IdP on a free loopback port, from a configuration directory this object writes."""

    def __init__(self, sp: ServiceProvider, *, users: Mapping[str, Mapping[str, list[str]]] = USERS) -> None:
        self.sp = sp
        self.users = users
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.entity_id = f"{self.url}/saml2/idp/metadata.php"
        self.sso_url = f"{self.url}/saml2/idp/SSOService.php"
        self.slo_url = f"{self.url}/saml2/idp/SingleLogoutService.php"
        self.key_pem, self.cert_pem = make_keypair("simplesamlphp-idp")
        self._dir = Path(tempfile.mkdtemp(prefix="simplesamlphp-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        path = self._dir / "log" / "simplesamlphp.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def idp_initiated_logout_url(self, return_to: str) -> str:
        """Where a person signs out at the IdP: it sends a LogoutRequest to every SP of the session."""
        return f"{self.slo_url}?{urlencode({'ReturnTo': return_to})}"

    def idp_initiated_login_url(self) -> str:
        """Unsolicited sign-in at the IdP (``spentityid``): a Response without InResponseTo."""
        return f"{self.url}/saml2/idp/SSOService.php?{urlencode({'spentityid': self.sp.entity_id})}"

    def _write(self) -> None:
        root = self._dir
        for sub in ("config", "config/metadata", "cert", "data", "log", "tmp", "sessions"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "cert" / "idp.key").write_bytes(self.key_pem)
        (root / "cert" / "idp.key").chmod(0o600)
        (root / "cert" / "idp.crt").write_bytes(self.cert_pem)
        config = {
            "baseurlpath": f"{self.url}/",
            "certdir": str(root / "cert") + "/",
            "loggingdir": str(root / "log") + "/",
            "datadir": str(root / "data") + "/",
            "tempdir": str(root / "tmp"),
            "metadatadir": str(root / "config" / "metadata") + "/",
            "attributenamemapdir": "/usr/share/simplesamlphp/config/attributemap/",
            "technicalcontact_name": "Test",
            "technicalcontact_email": "test@example.org",
            "timezone": "UTC",
            "secretsalt": secrets.token_hex(16),
            "auth.adminpassword": secrets.token_hex(16),
            "admin.protectindexpage": True,
            "admin.protectmetadata": False,
            "admin.checkforupdates": False,
            "trusted.url.domains": [],
            "enable.saml20-idp": True,
            "enable.shib13-idp": False,
            "enable.adfs-idp": False,
            "debug": {"saml": False, "backtraces": True, "validatexml": False},
            "showerrors": True,
            "errorreporting": False,
            "logging.level": 7,
            "logging.handler": "file",
            "logging.logfile": "simplesamlphp.log",
            "module.enable": {"exampleauth": True, "core": True, "saml": True, "admin": True},
            "session.duration": 3600,
            "session.cookie.name": "SimpleSAMLSessionID",
            "session.cookie.path": "/",
            "session.cookie.secure": False,
            # The IdP's own session cookie on plain HTTP: Lax (None would need Secure).
            "session.cookie.samesite": "Lax",
            "session.phpsession.cookiename": "SimpleSAML",
            "session.phpsession.savepath": str(root / "sessions"),
            "session.authtoken.cookiename": "SimpleSAMLAuthToken",
            "store.type": "phpsession",
            "language.available": ["en"],
            "language.default": "en",
            "theme.use": "default",
            "metadata.sources": [{"type": "flatfile"}],
        }
        (root / "config" / "config.php").write_text(f"<?php\n$config = {_php(config)};\n")
        authsources = {
            "admin": ["core:AdminPassword"],
            "example-userpass": {0: "exampleauth:UserPass", **dict(self.users)},
        }
        (root / "config" / "authsources.php").write_text(f"<?php\n$config = {_php(authsources)};\n")
        idp = {
            "host": "__DEFAULT__",
            "privatekey": str(root / "cert" / "idp.key"),
            "certificate": str(root / "cert" / "idp.crt"),
            "auth": "example-userpass",
            "signature.algorithm": RSA_SHA256,
            "sign.logout": True,
            "validate.logout": True,
            "logouttype": "traditional",
        }
        (root / "config" / "metadata" / "saml20-idp-hosted.php").write_text(
            f"<?php\n$metadata[{_php(self.entity_id)}] = {_php(idp)};\n"
        )
        sp = self.sp
        remote: dict[str, object] = {
            "AssertionConsumerService": sp.acs_url,
            "NameIDFormat": sp.name_id_format,
            "signature.algorithm": RSA_SHA256,
            "sign.logout": True,
            "validate.logout": True,
        }
        if sp.name_id_attribute:
            remote["simplesaml.nameidattribute"] = sp.name_id_attribute
        if sp.slo_url:
            remote["SingleLogoutService"] = [{"Binding": REDIRECT, "Location": sp.slo_url}]
        if sp.cert_pem:
            remote["certData"] = cert_base64(sp.cert_pem)
        if sp.oid_names:
            remote["attributes.NameFormat"] = "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"
            remote["authproc"] = {90: {"class": "core:AttributeMap", 0: "name2oid"}}
        remote.update(sp.extra)
        (root / "config" / "metadata" / "saml20-sp-remote.php").write_text(
            f"<?php\n$metadata[{_php(sp.entity_id)}] = {_php(remote)};\n"
        )

    def start(self) -> Self:
        if shutil.which(PHP) is None or not WWW.is_dir():
            raise RuntimeError("SimpleSAMLphp needs `apt-get install simplesamlphp php-cli php-xml php-mbstring`")
        self._write()
        env = {**os.environ, "SIMPLESAMLPHP_CONFIG_DIR": str(self._dir / "config")}
        self._process = subprocess.Popen(
            [PHP, "-S", f"127.0.0.1:{self.port}", "-t", str(WWW)],
            cwd=WWW,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.port, process=self._process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class SimpleSamlRig(Records):
    """SimpleSAMLphp plus a broker (on a real loopback port) that trusts it through its metadata.

    The broker reads the IdP's metadata as a deployer would (``metadata_file``); with ``single_logout`` it
    gets its own signing key and certificate, which the IdP is told through ``saml20-sp-remote.php``.
    """

    def __init__(
        self,
        config: dict[str, Any],
        tmp_path: Path,
        *,
        single_logout: bool = True,
        store: Mapping[str, Any] | None = None,
        **sp: Any,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = f"{self.url}/saml/{SSP_STORE}"
        self.sp_key_pem, self.sp_cert_pem = make_keypair("broker-sp")
        self.idp = SimpleSamlPhp(
            ServiceProvider(
                entity_id=f"{base}/metadata",
                acs_url=f"{base}/acs",
                slo_url=f"{base}/slo" if single_logout else None,
                cert_pem=self.sp_cert_pem if single_logout else None,
                **sp,
            )
        )
        self._tmp_path = tmp_path
        self._single_logout = single_logout
        self._store = dict(store or {})
        self.config = dict(config)
        self.db_url = str(config["database_url"])
        self.server: LiveServer | None = None

    def __enter__(self) -> SimpleSamlRig:
        self.idp.start()
        try:
            metadata = httpx.get(self.idp.entity_id, timeout=30)
            metadata.raise_for_status()
            metadata_file = self._tmp_path / "simplesamlphp-idp.xml"
            metadata_file.write_text(metadata.text)
            store: dict[str, Any] = {
                "type": "saml",
                "name": SSP_STORE,
                "display_name": "University SSO",
                "metadata_file": str(metadata_file),
                "attributes": {"username": OID_UID, "email": OID_MAIL, "groups": OID_ENTITLEMENT},
            }
            if self._single_logout:
                store["sp_private_key"] = self.sp_key_pem.decode()
                store["sp_certificate"] = self.sp_cert_pem.decode()
            store.update(self._store)
            self.config.update(public_url=self.url, identity_stores=[store])
            settings = load_settings(None, **self.config)
            self.server = LiveServer(create_app(settings), port=self.port).__enter__()
        except BaseException:
            self.idp.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.server is not None:
                self.server.__exit__(*exc)
        finally:
            self.idp.stop()

    def sign_in(self, page: Page, user: str = "carol") -> None:
        """From the broker's /login (one store: straight to the IdP) through SimpleSAMLphp's form and back."""
        page.goto(f"{self.url}/login")
        page.wait_for_selector('input[name="username"]')
        page.fill('input[name="username"]', user)
        page.fill('input[name="password"]', PASSWORDS[user])
        page.locator('button[type="submit"], input[type="submit"]').first.click()
        # SimpleSAMLphp's HTTP-POST page submits itself; the broker answers with a page of its own.
        page.wait_for_url(f"{self.url}/**")
        page.wait_for_load_state()

    def principals(self) -> list[tuple[str, str, str | None]]:
        db = Database(self.db_url)
        try:
            with db.transaction() as session:
                rows = session.scalars(select(Principal).where(Principal.store == SSP_STORE)).all()
                return [(r.subject, r.username, r.email) for r in rows]
        finally:
            db.dispose()
