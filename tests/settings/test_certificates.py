"""Certificate stores: mapping rules name certificate fields that exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.certificates import Hierarchy
from tests.support.config_files import good, problems


def test_rules_name_certificate_fields_and_anchors_are_pem_certificates(tmp_path: Path) -> None:
    anchors, _ = Hierarchy().write(tmp_path)
    (tmp_path / "junk.pem").write_text("not a certificate")
    store: dict[str, Any] = {
        "type": "x509",
        "name": "edge",
        "trust_anchors": [str(anchors), str(tmp_path / "junk.pem")],
        "rules": [{"match": {"subject.CN": "*"}, "subject": "{tpm}"}],
    }
    found = problems(tmp_path, good() | {"identity_stores": [store]})
    assert found == {
        "identity_stores[0].trust_anchors": f"{tmp_path / 'junk.pem'} is not a PEM certificate file",
        "identity_stores[0].rules[0]": "{tpm} is not a certificate field (subject.CN, san.uri, serial, ...)",
    }
