"""One owner module per third-party library inside ``broker/`` (the house rule in the README).

Every ``import`` and ``from ... import`` in ``broker/`` (function bodies and ``TYPE_CHECKING`` blocks
included) is read with :mod:`ast`; a library imported outside its owners is reported with file and line.
``broker/client/`` is exempt: it is the separate light program with owners of its own.

``PENDING`` names importers that are known and still to be moved into their owner; each entry says where its
import should go. An entry that no longer imports the library fails the test too, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

BROKER = Path(__file__).resolve().parents[1] / "broker"
EXEMPT = ("client/",)

# Library (top-level import name) -> the files or packages (ending in "/") that may import it.
OWNERS: dict[str, tuple[str, ...]] = {
    "httpx": ("http.py",),
    "httpx2": ("http.py",),
    "joserfc": ("jose.py",),
    "pyotp": ("mfa/totp.py",),
    "segno": ("mfa/totp.py",),
    "authlib": ("connectors/oidc.py",),
    "onelogin": ("connectors/saml.py", "connectors/saml_logout.py"),
    "boto3": ("aws/",),
    "botocore": ("aws/",),
    "mypy_boto3_sts": ("aws/",),
    "mypy_boto3_iam": ("aws/",),
    "mypy_boto3_s3": ("aws/",),
    "ldap": ("connectors/ldap.py",),
    "sqlalchemy": ("store/",),
    "structlog": ("logs.py",),
    "prometheus_client": ("monitoring.py",),
    "webauthn": ("mfa/webauthn.py",),
    "limits": ("ratelimit.py",),
    # cryptography is several libraries in one; each owner holds one of its concerns: certificates and keys
    # read from bytes (certificates.py), X.509 path validation with its CRLs (connectors/x509.py,
    # connectors/crl.py), Ed25519 signatures of the audit anchors (anchors.py), AES-GCM and HKDF for values at
    # rest (encryption.py).
    "cryptography": ("certificates.py", "connectors/x509.py", "connectors/crl.py", "anchors.py", "encryption.py"),
}

# (library, importer) -> where the import belongs. The lead shrinks this list; nothing may be added to it.
PENDING: dict[tuple[str, str], str] = {
    # Rate-limit expressions are checked with the configuration (every problem in one pass); ratelimit.py
    # imports the settings, so the settings cannot import it back without an import circle.
    ("limits", "settings/service.py"): "rate strings validated through ratelimit.py",
}


def _imports(path: Path) -> list[tuple[str, int]]:
    """(top-level module, line) for every absolute import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
    return sorted(found, key=lambda item: item[1])


def _owned(relative: str, owners: tuple[str, ...]) -> bool:
    return any(relative == o or (o.endswith("/") and relative.startswith(o)) for o in owners)


def _scan(root: Path = BROKER) -> dict[tuple[str, str], list[int]]:
    """(library, importer relative to broker/) -> lines, for every watched library outside ``EXEMPT``."""
    seen: dict[tuple[str, str], list[int]] = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(EXEMPT):
            continue
        for module, line in _imports(path):
            if module in OWNERS:
                seen.setdefault((module, relative), []).append(line)
    return seen


def _offenders(seen: dict[tuple[str, str], list[int]]) -> list[str]:
    return [
        f"broker/{importer}:{lines[0]} imports {library}; owner: {', '.join('broker/' + o for o in OWNERS[library])}"
        for (library, importer), lines in sorted(seen.items())
        if not _owned(importer, OWNERS[library]) and (library, importer) not in PENDING
    ]


def test_each_library_is_imported_only_by_its_owners() -> None:
    offenders = _offenders(_scan())
    assert not offenders, "Imports outside their owner module:\n  " + "\n  ".join(offenders)


def test_pending_entries_still_exist() -> None:
    """A moved import must leave PENDING, so the allowlist cannot hide a new offender later."""
    seen = _scan()
    stale = [
        f"{library} in broker/{importer}" for (library, importer) in sorted(PENDING) if (library, importer) not in seen
    ]
    assert not stale, "No longer imported; remove from PENDING in tests/test_owners.py:\n  " + "\n  ".join(stale)


def test_every_owner_exists_and_uses_its_library() -> None:
    seen = _scan()
    missing = [
        f"{library}: broker/{owner}"
        for library, owners in OWNERS.items()
        for owner in owners
        if not any(lib == library and _owned(importer, (owner,)) for lib, importer in seen)
    ]
    assert not missing, "Owners that no longer import their library (update OWNERS):\n  " + "\n  ".join(missing)


def test_the_scan_sees_imports_in_functions_and_type_checking_blocks(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import httpx\n"
        "def f():\n    from joserfc import jwt\n    from . import sibling\n"
    )
    assert _imports(sample) == [("typing", 1), ("httpx", 3), ("joserfc", 5)]


def test_an_import_outside_its_owner_is_reported_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "aws").mkdir()
    (tmp_path / "client").mkdir()
    (tmp_path / "aws" / "sts.py").write_text("import boto3\n")
    (tmp_path / "client" / "login.py").write_text("import httpx\n")
    (tmp_path / "notify.py").write_text("import json\n\nimport httpx\n")
    assert _offenders(_scan(tmp_path)) == ["broker/notify.py:3 imports httpx; owner: broker/http.py"]
