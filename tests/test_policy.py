"""Policy as tables: grant, deny, clamp, tag templating and STS limits. Pure: no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from broker.identity import Channel, Identity, MfaEvidence, MfaLevel
from broker.policy import AccessRequest, decide, render_template, sts_name, visible_roles
from broker.settings import RoleConfig

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def identity(**kw: Any) -> Identity:
    fields: dict[str, Any] = {
        "subject": "u-1",
        "issuer": "https://idp.example",
        "store": "corp",
        "username": "alice",
        "email": "alice@example.com",
        "groups": frozenset({"engineering"}),
        "attributes": {"team": "platform"},
        "mfa": MfaEvidence(MfaLevel.MFA, ("pwd", "otp"), NOW),
    }
    fields.update(kw)
    return Identity(**fields)


def role(**kw: Any) -> RoleConfig:
    fields: dict[str, Any] = {
        "name": "readonly",
        "role_arn": "arn:aws:iam::123456789012:role/ReadOnly",
        "grant": [{"groups": ["engineering"]}],
        "mfa": "mfa",
        "max_duration_seconds": 3600,
    }
    fields.update(kw)
    return RoleConfig(**fields)


def request(**kw: Any) -> AccessRequest:
    fields: dict[str, Any] = {"role": "readonly", "channel": Channel.CLI}
    fields.update(kw)
    return AccessRequest(**fields)


@pytest.mark.parametrize(
    ("grant", "who", "allowed", "reason"),
    [
        ([{"groups": ["engineering"]}], {}, True, "granted"),
        ([{"groups": ["finance"]}], {}, False, "role_not_granted"),
        ([{"groups": ["Engineering"]}], {}, False, "role_not_granted"),  # exact, no case folding
        ([{"subjects": ["u-1"]}], {}, True, "granted"),
        ([{"subjects": ["u-2"]}], {}, False, "role_not_granted"),
        ([{"emails": ["alice@example.com"]}], {}, True, "granted"),
        ([{"groups": ["engineering"], "stores": ["other"]}], {}, False, "role_not_granted"),  # all conditions
        ([{"groups": ["engineering"], "stores": ["corp"]}], {}, True, "granted"),
        ([{"groups": ["finance"]}, {"subjects": ["u-1"]}], {}, True, "granted"),  # any rule
        ([{"claims": {"team": ["platform"]}}], {}, True, "granted"),
        ([{"claims": {"team": ["data"]}}], {}, False, "role_not_granted"),
        ([{"claims": {"missing": ["x"]}}], {}, False, "role_not_granted"),
        ([{"everyone": True}], {"groups": frozenset()}, True, "granted"),
    ],
)
def test_grant_rules(grant: list[dict[str, Any]], who: dict[str, Any], allowed: bool, reason: str) -> None:
    decision = decide(identity(**who), [role(grant=grant)], request(), NOW)
    assert (decision.allowed, decision.reason) == (allowed, reason)


@pytest.mark.parametrize(
    ("required", "have", "allowed"),
    [
        ("none", MfaLevel.NONE, True),
        ("mfa", MfaLevel.NONE, False),
        ("mfa", MfaLevel.MFA, True),
        ("phishing_resistant", MfaLevel.MFA, False),
        ("phishing_resistant", MfaLevel.PHISHING_RESISTANT, True),
    ],
)
def test_mfa_levels(required: str, have: MfaLevel, allowed: bool) -> None:
    decision = decide(identity(mfa=MfaEvidence(have)), [role(mfa=required)], request(), NOW)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason == "mfa_insufficient"
        assert decision.required_mfa == MfaLevel.parse(required)


def test_unknown_role_is_denied() -> None:
    decision = decide(identity(), [role()], request(role="nope"), NOW)
    assert (decision.allowed, decision.reason) == (False, "role_unknown")


@pytest.mark.parametrize(
    ("max_duration", "default", "requested", "chaining", "expected"),
    [
        (3600, None, None, False, 3600),
        (43200, None, None, False, 3600),  # shortest useful default: one hour
        (43200, 7200, None, False, 7200),  # the role's default
        (3600, None, 7200, False, 3600),  # clamped to the role's maximum
        (3600, None, 60, False, 900),  # STS minimum is 900 seconds
        (43200, None, 43200, False, 43200),
        (43200, None, 43200, True, 3600),  # role chaining caps at one hour
        (900, None, None, True, 900),
    ],
)
def test_duration_clamping(
    max_duration: int, default: int | None, requested: int | None, chaining: bool, expected: int
) -> None:
    r = role(max_duration_seconds=max_duration, default_duration_seconds=default)
    decision = decide(identity(), [r], request(duration_seconds=requested, role_chaining=chaining), NOW)
    assert decision.allowed
    assert decision.duration_seconds == expected


def test_negative_duration_is_denied() -> None:
    decision = decide(identity(), [role()], request(duration_seconds=-5), NOW)
    assert decision.reason == "duration_invalid"


@pytest.mark.parametrize(
    ("cidrs", "ip", "allowed"),
    [
        ([], None, True),
        (["10.0.0.0/8"], "10.1.2.3", True),
        (["10.0.0.0/8"], "192.0.2.1", False),
        (["10.0.0.0/8"], None, False),
        (["10.0.0.0/8"], "not-an-ip", False),
        (["2001:db8::/32"], "2001:db8::1", True),
    ],
)
def test_source_networks(cidrs: list[str], ip: str | None, allowed: bool) -> None:
    decision = decide(identity(), [role(source_cidrs=cidrs)], request(client_ip=ip), NOW)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason == "source_ip_not_allowed"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{email}", "alice@example.com"),
        ("{username}@{store}", "alice@corp"),
        ("{attr.team}", "platform"),
        ("{attr.absent}", None),
        ("static", "static"),
        ("{unknown}", None),
    ],
)
def test_tag_templates(template: str, expected: str | None) -> None:
    assert render_template(template, identity()) == expected


def test_tags_and_transitive_keys() -> None:
    r = role(
        session_tags={"Email": "{email}", "Team": "{attr.team}", "Cost": "{attr.cost}"},
        transitive_tags=["Email", "Cost"],
    )
    decision = decide(identity(), [r], request(), NOW)
    assert decision.tags == {"Email": "alice@example.com", "Team": "platform"}
    assert decision.transitive_tag_keys == ("Email",)  # Cost had no value, so it was not sent


def test_tag_value_with_forbidden_characters_is_denied() -> None:
    r = role(session_tags={"Team": "{attr.team}"})
    decision = decide(identity(attributes={"team": "a;b<script>"}), [r], request(), NOW)
    assert decision.reason == "tag_value_invalid"


def test_tag_value_over_256_characters_is_denied() -> None:
    r = role(session_tags={"Team": "{attr.team}"})
    decision = decide(identity(attributes={"team": "x" * 257}), [r], request(), NOW)
    assert decision.reason == "tag_value_invalid"


def test_session_policy_over_sts_limit_is_denied() -> None:
    big = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": f"s3:GetObject{i}", "Resource": f"arn:aws:s3:::bucket-{i}/*"}
            for i in range(60)
        ],
    }
    decision = decide(identity(), [role(session_policy=big)], request(), NOW)
    assert decision.reason == "session_policy_too_large"


def test_session_policy_digest_is_stable() -> None:
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:List*", "Resource": "*"}]}
    first = decide(identity(), [role(session_policy=policy)], request(), NOW)
    second = decide(identity(), [role(session_policy=dict(reversed(policy.items())))], request(), NOW)
    assert first.policy_digest == second.policy_digest
    assert first.session_policy is not None and len(first.session_policy) < 2048


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice", "alice"),
        ("alice@example.com", "alice@example.com"),
        ("a", None),  # too short: digest appended
        ("auth0|12345", None),  # '|' is not allowed: replaced, digest appended
        ("x" * 80, None),  # too long: truncated, digest appended
    ],
)
def test_sts_names(value: str, expected: str | None) -> None:
    name = sts_name(value)
    assert 2 <= len(name) <= 64
    assert all(c.isalnum() or c in "_+=,.@-" for c in name)
    if expected is not None:
        assert name == expected
    else:
        assert name != value


def test_sts_names_do_not_collide_after_cleaning() -> None:
    assert sts_name("a|b") != sts_name("a/b")


def test_source_identity_is_the_principal_and_session_name_the_username() -> None:
    decision = decide(identity(), [role()], request(), NOW)
    assert decision.source_identity == "alice@example.com"
    assert decision.role_session_name == "alice"


def test_visible_roles_ignore_mfa_but_not_grants() -> None:
    roles = [role(name="a", mfa="phishing_resistant"), role(name="b", grant=[{"groups": ["x"]}])]
    assert [r.name for r in visible_roles(identity(), roles)] == ["a"]


# ---------------------------------------------------------------- the simulator (explain)


def test_explain_names_each_condition_and_the_sts_request() -> None:
    from broker.policy import explain

    roles = [
        role(session_tags={"Email": "{email}", "Team": "{attr.team}"}, session_policy={"Version": "2012-10-17"}),
        role(name="admin", role_arn="arn:aws:iam::123456789012:role/Admin", grant=[{"groups": ["admins"]}]),
        role(
            name="ops",
            role_arn="arn:aws:iam::123456789012:role/Ops",
            grant=[{"stores": ["corp"], "claims": {"team": ["ops"]}}, {"emails": ["alice@example.com"]}],
            mfa="phishing_resistant",
        ),
    ]
    by_name = {e.role.name: e.to_json() for e in explain(identity(), roles, NOW)}

    readonly = by_name["readonly"]
    assert readonly["usable"] and readonly["reason"] == "granted"
    assert readonly["rules"] == [
        {
            "rule": 0,
            "matched": True,
            "conditions": [
                {"condition": "groups any of ['engineering']", "held": True, "why": "member of ['engineering']"}
            ],
        }
    ]
    assert readonly["sts"] == {
        "duration_seconds": 3600,
        "role_session_name": "alice",
        "source_identity": "alice@example.com",
        "tags": {"Email": "alice@example.com", "Team": "platform"},
        "transitive_tag_keys": [],
        "session_policy": {"Version": "2012-10-17"},
        "policy_arns": [],
        "tags_omitted": {},
    }
    without_email = {e.role.name: e.to_json() for e in explain(identity(email=None), roles, NOW)}
    assert without_email["readonly"]["sts"]["tags"] == {"Team": "platform"}
    assert without_email["readonly"]["sts"]["tags_omitted"] == {"Email": "{email}"}

    admin = by_name["admin"]
    assert not admin["visible"] and not admin["usable"] and admin["reason"] == "role_not_granted"
    assert admin["rules"][0]["conditions"][0]["why"] == "groups ['engineering'] include none of them"
    assert "sts" not in admin

    ops = by_name["ops"]
    # The first rule fails on its claim (the store held); the second matches; MFA is what is missing.
    assert [r["matched"] for r in ops["rules"]] == [False, True]
    assert [(c["condition"], c["held"]) for c in ops["rules"][0]["conditions"]] == [
        ("store in ['corp']", True),
        ("claim team in ['ops']", False),
    ]
    assert ops["rules"][0]["conditions"][1]["why"] == "claim team 'platform' is not one of ['ops']"
    assert ops["visible"] and not ops["usable"] and ops["reason"] == "mfa_insufficient"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"client_ip": "198.51.100.7"}, "source_ip_not_allowed"),
        ({"client_ip": "10.1.2.3"}, "granted"),
        ({"client_ip": "10.1.2.3", "duration_seconds": 7200}, "granted"),
    ],
)
def test_explain_uses_decide_for_the_verdict(kwargs: dict[str, Any], reason: str) -> None:
    from broker.policy import explain

    roles = [role(source_cidrs=["10.0.0.0/8"])]
    (only,) = explain(identity(), roles, NOW, role="readonly", **kwargs)
    assert only.decision == decide(identity(), roles, request(**kwargs), NOW)
    assert only.decision.reason == reason


def test_simulated_identity_mfa_age_counts_for_fresh_mfa_roles() -> None:
    from broker.policy import explain, simulated_identity

    roles = [role(mfa_max_age_minutes=10)]
    fresh = simulated_identity(store="corp", subject="u-1", groups=["engineering"], mfa=MfaLevel.MFA, now=NOW)
    stale = simulated_identity(
        store="corp", subject="u-1", groups=["engineering"], mfa=MfaLevel.MFA, mfa_age_minutes=30, now=NOW
    )
    assert explain(fresh, roles, NOW)[0].decision.reason == "granted"
    assert explain(stale, roles, NOW)[0].decision.reason == "mfa_stale"
