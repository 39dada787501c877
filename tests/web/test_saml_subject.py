"""Who a SAML sign-in is, against the pysaml2 IdP peer over HTTP: the NameID format the broker asks for, a
transient NameID refused unless an attribute names the person, and configured attributes that never arrive.
"""

from __future__ import annotations

import base64
import json
import uuid
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from lxml import etree
from sqlalchemy import select

from broker import logs
from broker.store.db import Database
from broker.store.models import AuditEvent, Issuance, Principal
from tests.support.saml_broker import USERS, SamlRig

TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
EMPLOYEE_ID = "urn:oid:2.16.840.1.113730.3.1.3"
SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"


def logins(database: Database) -> list[tuple[str, str]]:
    with database.transaction() as s:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.event == "login").order_by(AuditEvent.seq)).all()
        return [(e.outcome, e.reason) for e in rows]


def principals(database: Database) -> list[str]:
    with database.transaction() as s:
        return sorted(p.subject for p in s.scalars(select(Principal)))


def transient_sign_in(rig: SamlRig, **attributes: list[str]) -> Any:
    client = rig.client()
    started = rig.begin(client)
    values = {**(USERS["alice"].get("attributes") or {}), **attributes}
    xml = rig.respond(started, name_id=f"_{uuid.uuid4().hex}", name_id_format=TRANSIENT, attributes=values)
    return client, rig.post(client, xml, relay_state=None)


def test_metadata_and_authn_request_ask_for_a_persistent_nameid(make_config: Callable[..., dict[str, Any]]) -> None:
    with SamlRig(make_config()) as rig, rig.client() as client:
        metadata = etree.fromstring(client.get("/saml/corp/metadata").content)
        assert [e.text for e in metadata.iter(f"{{{MD}}}NameIDFormat")] == [PERSISTENT]
        location = rig.begin(client).location
        request = etree.fromstring(
            zlib.decompress(base64.b64decode(parse_qs(urlsplit(location).query)["SAMLRequest"][0]), -15)
        )
        policy = request.find(f"{{{SAMLP}}}NameIDPolicy")
        assert policy is not None and policy.get("Format") == PERSISTENT


def test_a_transient_nameid_is_refused_with_the_reason(
    make_config: Callable[..., dict[str, Any]], database: Database
) -> None:
    with SamlRig(make_config()) as rig:
        client, reply = transient_sign_in(rig)
        assert reply.status_code == 401
        assert "one-time (transient) identifier" in reply.text and "subject: attr.NAME" in reply.text
        assert client.get("/").status_code == 303
        assert logins(database) == [("denied", "saml.nameid_transient")]
        assert principals(database) == []
        with database.transaction() as s:
            assert s.scalars(select(Issuance)).all() == []


def test_a_transient_nameid_with_a_subject_attribute_is_one_principal(
    make_config: Callable[..., dict[str, Any]], database: Database
) -> None:
    with SamlRig(make_config(), store_overrides={"subject": f"attr.{EMPLOYEE_ID}"}) as rig:
        for _ in range(2):
            client, reply = transient_sign_in(rig, **{EMPLOYEE_ID: ["E-1001"]})
            assert reply.status_code == 303, reply.text[:300]
            assert client.get("/").status_code == 200
        assert principals(database) == ["E-1001"]
        assert logins(database) == [("ok", "authenticated")] * 2


def test_a_missing_subject_attribute_is_refused_and_named(
    make_config: Callable[..., dict[str, Any]], database: Database
) -> None:
    with SamlRig(make_config(), store_overrides={"subject": f"attr.{EMPLOYEE_ID}"}) as rig:
        client, reply = transient_sign_in(rig)
        client.close()
        assert reply.status_code == 401
        assert EMPLOYEE_ID in reply.text
        assert logins(database) == [("denied", "saml.subject_attribute_missing")]
        assert principals(database) == []


def test_configured_attributes_that_never_arrive_are_audited_logged_and_shown(
    make_config: Callable[..., dict[str, Any]], database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("INFO", json=True)  # one known format, whatever an earlier test configured
    with SamlRig(make_config()) as rig, rig.client() as client:
        started = rig.begin(client)
        sent = {"urn:oid:0.9.2342.19200300.100.1.3": ["alice@corp.example"]}
        reply = rig.post(client, rig.respond(started, attributes=sent))
        assert reply.status_code == 200
        assert "Signed in, with information missing" in reply.text
        assert "<code>email</code>, <code>groups</code>" in reply.text
        assert "<code>urn:oid:0.9.2342.19200300.100.1.3</code>" in reply.text
        assert client.get("/").status_code == 200  # signed in all the same
        with database.transaction() as s:
            [login] = s.scalars(select(AuditEvent).where(AuditEvent.event == "login")).all()
            assert (login.outcome, login.reason) == ("ok", "authenticated")
            assert login.detail["attributes_absent"] == ["email", "groups"]
            assert login.detail["attributes_present"] == ["urn:oid:0.9.2342.19200300.100.1.3"]
    captured = capsys.readouterr()
    [line] = [x for x in (captured.out + captured.err).splitlines() if "saml attributes absent" in x]
    logged = json.loads(line)
    assert (logged["level"], logged["absent"], logged["present"]) == (
        "warning",
        ["email", "groups"],
        ["urn:oid:0.9.2342.19200300.100.1.3"],
    )


def test_attributes_present_mean_no_hint(make_config: Callable[..., dict[str, Any]], database: Database) -> None:
    with SamlRig(make_config()) as rig, rig.client() as client:
        reply = rig.post(client, rig.respond(rig.begin(client)))
        assert (reply.status_code, reply.headers["location"]) == (303, "/")
        with database.transaction() as s:
            [login] = s.scalars(select(AuditEvent).where(AuditEvent.event == "login")).all()
            assert "attributes_absent" not in login.detail
