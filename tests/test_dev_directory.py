"""`broker dev --with-ldap`: a demo directory (Debian's slapd) next to the offline broker, to try LDAP sign-in.

Peers: the `broker dev` process (with its own moto STS emulator and slapd children), over real HTTP.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from broker.dev_directory import DEMO_PASSWORDS
from tests.support.portal import csrf_from
from tests.support.processes import broker_env, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


def test_broker_dev_with_ldap_signs_in_from_the_demo_directory_and_stops_it(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "dev",
            "--with-ldap",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "dev"),
        ],
        cwd=ROOT,
        env=broker_env(COLUMNS="200"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    directory_port = None
    try:
        wait_for_port(port, process=process, timeout=60)
        banner = ""
        assert process.stdout is not None
        while "authenticator app at /mfa" not in banner:
            line = process.stdout.readline()
            assert line, banner
            banner += line
        found = re.search(r"Demo directory \(slapd at ldap://127\.0\.0\.1:(\d+)\)", banner)
        assert found, banner
        directory_port = int(found.group(1))
        assert f"password: {DEMO_PASSWORDS['alice']}" in banner
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            listing = client.get("/login", headers={"Accept": "text/html"})
            assert "Sign in with Demo directory (LDAP)" in listing.text
            form = client.get("/login/ldap/demo-ldap", headers={"Accept": "text/html"})
            signed_in = client.post(
                "/login/ldap/demo-ldap",
                data={"username": "bob@example.com", "password": DEMO_PASSWORDS["bob"], "csrf": csrf_from(form.text)},
                headers={"Accept": "text/html"},
            )
            assert signed_in.status_code == 303, signed_in.text
            portal = client.get("/", headers={"Accept": "text/html"})
            # bob is in platform, nested in engineering, which dev-readonly is granted to (with MFA).
            assert 'data-role="dev-readonly"' in portal.text and "needs mfa sign-in" in portal.text
    finally:
        process.terminate()
        process.wait(timeout=30)
    # Stopping the broker stopped its directory.
    assert directory_port is not None
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", directory_port)) != 0
