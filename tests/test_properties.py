"""Property tests (hypothesis) for the pure parts an attacker reaches: policy, templating, STS names, settings
validation and the SAML pre-parse checks. Deterministic (derandomized) and bounded so the suite stays fast;
raise ``HYPOTHESIS_MAX_EXAMPLES`` for a longer local run.
"""

from __future__ import annotations

import base64
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.connectors.saml import SamlConnector
from broker.errors import BrokerError, ConfigError
from broker.identity import Channel, Identity, MfaEvidence, MfaLevel
from broker.policy import AccessRequest, decide, render_template, sts_name
from broker.settings import SamlStoreConfig, load_settings
from tests.conftest import SECRET, base_config
from tests.support.saml_idp import make_keypair

FUZZ = settings(
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "60")),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
STS_ALPHABET = re.compile(r"^[\w+=,.@-]{2,64}$")
NOW = datetime(2030, 1, 1, tzinfo=UTC)
# Hostile-looking text: quotes, NUL, right-to-left override, braces, long runs.
HOSTILE = st.text(
    alphabet=st.one_of(st.characters(), st.sampled_from(["\x00", "\u202e", "{", "}", "'", '"', "\\", "/"])),
    max_size=300,
)


ROLES = load_settings(None, **base_config("sqlite://", "http://127.0.0.1:1")).roles


identities = st.builds(
    Identity,
    subject=HOSTILE.filter(bool),
    issuer=st.just("https://idp.test"),
    store=st.sampled_from(["corp", "breakglass"]),
    username=HOSTILE.filter(bool),
    email=st.one_of(st.none(), HOSTILE),
    groups=st.frozensets(st.sampled_from(["engineering", "admins", "sales", "Engineering", "admins "]), max_size=3),
    attributes=st.dictionaries(st.sampled_from(["dept", "team"]), HOSTILE, max_size=2),
    mfa=st.builds(
        MfaEvidence,
        level=st.sampled_from(list(MfaLevel)),
        authenticated_at=st.just(NOW - timedelta(minutes=1)),
    ),
)


@FUZZ
@given(value=HOSTILE)
def test_sts_name_always_fits_sts_alphabet(value: str) -> None:
    name = sts_name(value)
    assert STS_ALPHABET.match(name), name
    if STS_ALPHABET.match(value):
        assert name == value  # a valid name is kept verbatim


@FUZZ
@given(a=HOSTILE, b=HOSTILE)
def test_sts_name_keeps_distinct_principals_distinct(a: str, b: str) -> None:
    if a != b:
        assert sts_name(a) != sts_name(b)


@FUZZ
@given(template=HOSTILE, identity=identities)
def test_tag_template_never_raises_and_leaves_no_known_placeholder(template: str, identity: Identity) -> None:
    result = render_template(template, identity)
    if result is not None:
        for name in ("username", "subject", "store", "issuer"):
            assert "{" + name + "}" not in result or "{" + name + "}" in getattr(identity, name)


@FUZZ
@given(
    identity=identities,
    role=st.one_of(st.sampled_from(["readonly", "admin"]), HOSTILE),
    duration=st.one_of(st.none(), st.integers(min_value=-(10**6), max_value=10**6)),
    channel=st.sampled_from(list(Channel)),
)
def test_decide_is_default_deny(identity: Identity, role: str, duration: int | None, channel: Channel) -> None:
    decision = decide(identity, ROLES, AccessRequest(role=role, channel=channel, duration_seconds=duration), NOW)
    configured = next((r for r in ROLES if r.name == role), None)
    if configured is None:
        assert not decision.allowed and decision.reason == "role_unknown"
        return
    required_group = {"readonly": "engineering", "admin": "admins"}[role]
    if required_group not in identity.groups or identity.mfa.level < configured.mfa:
        assert not decision.allowed
    if decision.allowed:
        assert 900 <= decision.duration_seconds <= configured.max_duration_seconds
        assert STS_ALPHABET.match(decision.role_session_name)
        assert decision.reasons  # it says why


junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=10,
)


@FUZZ
@given(
    overrides=st.dictionaries(
        st.sampled_from(["mode", "public_url", "roles", "identity_stores", "aws", "session", "oauth", "rate_limits"]),
        junk,
        max_size=3,
    )
)
def test_settings_reject_junk_only_with_config_error(overrides: dict[str, Any]) -> None:
    try:
        load_settings(None, secret_key=SECRET, **overrides)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(path, str) and message for path, message in exc.problems)


@pytest.fixture(scope="module")
def saml_connector() -> SamlConnector:
    _, cert = make_keypair("fuzz-idp")
    config = SamlStoreConfig(
        type="saml",
        name="corp",
        idp_entity_id="https://idp.test",
        sso_url="https://idp.test/sso",
        certificates=[cert.decode()],
    )
    return SamlConnector(config, public_url="https://broker.test")


@FUZZ
@given(body=st.binary(max_size=2048))
def test_saml_precheck_refuses_any_bytes_cleanly(saml_connector: SamlConnector, body: bytes) -> None:
    try:
        saml_connector.check(base64.b64encode(body).decode(), now=NOW)
    except BrokerError as exc:
        assert 400 <= exc.status < 500
        assert exc.reason.startswith("saml.")


@FUZZ
@given(
    declaration=st.sampled_from(["<!DOCTYPE", "<!doctype", "<! DOCTYPE", "<!ENTITY", "<!ELEMENT", "<!ATTLIST"]),
    padding=st.text(alphabet=" \t\r\n", max_size=5),
)
def test_saml_markup_declarations_are_refused_before_parsing(
    saml_connector: SamlConnector, declaration: str, padding: str
) -> None:
    xml = f'<?xml version="1.0"?>{padding}{declaration} r [<!ENTITY x "y">]><samlp:Response/>'
    with pytest.raises(BrokerError) as caught:
        saml_connector.check(base64.b64encode(xml.encode()).decode(), now=NOW)
    assert caught.value.reason == "saml.doctype"


@FUZZ
@given(size=st.integers(min_value=350_000, max_value=700_000))  # base64 characters
def test_saml_oversized_is_refused_before_decoding(saml_connector: SamlConnector, size: int) -> None:
    with pytest.raises(BrokerError) as caught:
        saml_connector.check("A" * (size - size % 4), now=NOW)
    assert caught.value.status == 413 and caught.value.reason == "saml.too_large"
