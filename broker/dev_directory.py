"""A throwaway OpenLDAP directory: Debian's ``slapd`` with its own configuration and data in one folder.

``broker dev --with-ldap`` starts one with a few demo people so that LDAP sign-in can be tried offline; the
test suite starts one per module (plain and with TLS). slapd listens on 127.0.0.1 only, runs in the
foreground as a child process, and is always stopped by :meth:`Slapd.stop` (or leaving the ``with`` block).

Entries are added online with ``ldapadd`` after start-up rather than loaded with ``slapadd``, because the
``memberof`` overlay maintains ``memberOf`` only for changes that pass through the running server.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")


class DirectoryUnavailable(RuntimeError):
    """slapd is not installed, or did not start; the message says what to install or what it printed."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for slapd's LDAPS listener and StartTLS: the CA that issued the server certificate, the
    certificate (for 127.0.0.1) and its private key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Slapd:
    """One slapd process: ``suffix`` is the naming context, ``root_dn``/``root_password`` its manager."""

    def __init__(
        self,
        workdir: Path,
        *,
        suffix: str,
        root_password: str,
        ldif: str,
        tls: TlsFiles | None = None,
        acl: str = "",
    ) -> None:
        self.workdir = workdir
        self.suffix = suffix
        self.root_dn = f"cn=admin,{suffix}"
        self.root_password = root_password
        self.ldif = ldif
        self.tls = tls
        self.acl = acl
        self.port = _free_port()
        self.tls_port = _free_port() if tls else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        if self.tls_port is None:
            raise DirectoryUnavailable("this directory was started without TLS")
        return f"ldaps://127.0.0.1:{self.tls_port}"

    def _config(self) -> str:
        lines = [f"include {SCHEMA_DIR / name}.schema" for name in SCHEMAS]
        lines += [
            f"modulepath {MODULE_DIR}",
            "moduleload back_mdb",
            "moduleload memberof",
            f"pidfile {self.workdir / 'slapd.pid'}",
            f"argsfile {self.workdir / 'slapd.args'}",
        ]
        if self.tls:
            lines += [
                f"TLSCACertificateFile {self.tls.ca_file}",
                f"TLSCertificateFile {self.tls.cert_file}",
                f"TLSCertificateKeyFile {self.tls.key_file}",
            ]
        lines += [
            "database mdb",
            "maxsize 16777216",
            f'suffix "{self.suffix}"',
            f'rootdn "{self.root_dn}"',
            f"rootpw {self.root_password}",
            f"directory {self.workdir / 'db'}",
            "overlay memberof",
            "memberof-group-oc groupOfNames",
            "memberof-member-ad member",
            "memberof-memberof-ad memberOf",
            "memberof-refint true",
            self.acl or "access to attrs=userPassword by anonymous auth by * none\naccess to * by users read by * none",
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> Self:
        slapd = shutil.which("slapd") or "/usr/sbin/slapd"
        if not Path(slapd).exists() or shutil.which("ldapadd") is None:
            raise DirectoryUnavailable("slapd or ldapadd is missing: apt-get install slapd ldap-utils")
        (self.workdir / "db").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "slapd.conf"
        config.write_text(self._config())
        listeners = self.url + "/" + (f" {self.ldaps_url}/" if self.tls else "")
        log = (self.workdir / "slapd.log").open("wb")
        # -d 0: stay in the foreground (a child this process can stop) and log nothing beyond errors.
        self.process = subprocess.Popen(
            [slapd, "-f", str(config), "-h", listeners, "-d", "0"], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        try:
            self._wait()
            self._load()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, timeout: float = 20.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = (self.workdir / "slapd.log").read_text(errors="replace")[-2000:]
                raise DirectoryUnavailable(f"slapd exited with {self.process.returncode}: {output}")
            try:
                for port in ports:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise DirectoryUnavailable(f"slapd is not listening after {timeout}s")

    def add(self, ldif: str) -> None:
        """Add entries (LDIF) through the running server, as the directory manager."""
        result = subprocess.run(
            ["ldapadd", "-x", "-H", self.url, "-D", self.root_dn, "-w", self.root_password],
            input=ldif.encode(),
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise DirectoryUnavailable(f"ldapadd failed: {result.stderr.decode(errors='replace')[-2000:]}")

    def _load(self) -> None:
        self.add(self.ldif)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# ---------------------------------------------------------------- the demo directory of `broker dev --with-ldap`

DEMO_SUFFIX = "dc=example,dc=com"
DEMO_SERVICE_DN = f"cn=broker,ou=services,{DEMO_SUFFIX}"
DEMO_PASSWORDS = {"alice": "alice-dev-password", "bob": "bob-dev-password"}


def demo_ldif(service_password: str) -> str:
    """People ``alice`` (engineering, admins) and ``bob`` (platform, nested in engineering)."""
    s = DEMO_SUFFIX
    return f"""dn: {s}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,{s}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{s}
objectClass: organizationalUnit
ou: groups

dn: ou=services,{s}
objectClass: organizationalUnit
ou: services

dn: {DEMO_SERVICE_DN}
objectClass: applicationProcess
objectClass: simpleSecurityObject
cn: broker
userPassword: {service_password}

dn: uid=alice,ou=people,{s}
objectClass: inetOrgPerson
uid: alice
cn: Alice Example
sn: Example
mail: alice@example.com
departmentNumber: platform
userPassword: {DEMO_PASSWORDS["alice"]}

dn: uid=bob,ou=people,{s}
objectClass: inetOrgPerson
uid: bob
cn: Bob Example
sn: Example
mail: bob@example.com
userPassword: {DEMO_PASSWORDS["bob"]}

dn: cn=platform,ou=groups,{s}
objectClass: groupOfNames
cn: platform
member: uid=bob,ou=people,{s}

dn: cn=engineering,ou=groups,{s}
objectClass: groupOfNames
cn: engineering
member: uid=alice,ou=people,{s}
member: cn=platform,ou=groups,{s}

dn: cn=admins,ou=groups,{s}
objectClass: groupOfNames
cn: admins
member: uid=alice,ou=people,{s}
"""
