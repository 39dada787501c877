"""Least-privilege role decisions: pure, default-deny, and saying why.

``decide(identity, roles, request, now)`` does no I/O. It grants a role only when a grant rule matches, the
sign-in's MFA evidence meets the role's level, the client address is allowed, and the STS request it implies
fits STS's own limits (so a request that STS would refuse is refused here first, with a clear reason).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from broker.identity import Channel, Identity, MfaEvidence, MfaLevel
from broker.settings import STS_MAX_DURATION, STS_MIN_DURATION, AudienceBinding, GrantRule, RoleConfig

# STS: role chaining caps a session at one hour (IAM User Guide, "Role chaining").
ROLE_CHAINING_MAX_SECONDS = 3600
# STS AssumeRole: at most 50 session tags, keys up to 128 and values up to 256 characters.
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE = 50, 128, 256
# STS AssumeRole: the plaintext inline session policy may be at most 2,048 characters.
MAX_SESSION_POLICY_CHARS = 2048
# RoleSessionName and SourceIdentity: 2..64 characters of [\w+=,.@-].
_STS_NAME_CHARS = re.compile(r"[^\w+=,.@-]")
_TAG_VALUE = re.compile(r"^[\w .:/=+\-@]*$")
_TEMPLATE = re.compile(r"\{([a-z_]+(?:\.[A-Za-z0-9_:-]+)?)\}")


@dataclass(frozen=True)
class AccessRequest:
    role: str
    channel: Channel
    duration_seconds: int | None = None
    client_ip: str | None = None
    # The broker itself runs on role credentials, so STS treats AssumeRole as role chaining.
    role_chaining: bool = False


@dataclass(frozen=True)
class ActiveGrant:
    """An approved just-in-time window for one role (``broker.elevation``), passed to :func:`decide` as data."""

    role: str
    request_id: int
    ends_at: datetime


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    reasons: tuple[str, ...] = ()
    role: RoleConfig | None = None
    required_mfa: MfaLevel | None = None
    duration_seconds: int = 0
    requested_duration_seconds: int | None = None
    role_session_name: str = ""
    source_identity: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    transitive_tag_keys: tuple[str, ...] = ()
    session_policy: str | None = None
    policy_digest: str | None = None
    policy_arns: tuple[str, ...] = ()
    # The just-in-time request whose approval made this role usable, if any.
    grant_request_id: int | None = None


def _deny(reason: str, *reasons: str, role: RoleConfig | None = None, required_mfa: MfaLevel | None = None) -> Decision:
    return Decision(allowed=False, reason=reason, reasons=reasons or (reason,), role=role, required_mfa=required_mfa)


def rule_matches(rule: GrantRule, identity: Identity) -> bool:
    """All conditions of one rule must hold. Comparisons are exact: no case folding, no wildcards."""
    if rule.stores and identity.store not in rule.stores:
        return False
    if rule.groups and not identity.groups.intersection(rule.groups):
        return False
    if rule.subjects and identity.subject not in rule.subjects:
        return False
    if rule.emails and identity.email not in rule.emails:
        return False
    return all(identity.attributes.get(claim) in allowed for claim, allowed in rule.claims.items())


def grants(role: RoleConfig, identity: Identity) -> bool:
    return any(rule_matches(rule, identity) for rule in role.grant)


def visible_roles(identity: Identity, roles: Sequence[RoleConfig]) -> list[RoleConfig]:
    """The roles a rule grants to this identity (whatever its MFA level: the portal says what is missing)."""
    return [role for role in roles if grants(role, identity)]


def sts_name(value: str, *, limit: int = 64) -> str:
    """Represent ``value`` in STS's name alphabet. If characters must change, a digest keeps it unique."""
    cleaned = _STS_NAME_CHARS.sub("-", value)
    if cleaned == value and 2 <= len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    return (cleaned[: limit - 11] + "-" + digest).lstrip("-") or digest


def render_template(template: str, identity: Identity) -> str | None:
    """Fill ``{username}``, ``{email}``, ``{subject}``, ``{store}``, ``{issuer}`` or ``{attr.NAME}``.

    Returns None when a placeholder has no value (the tag is then omitted rather than sent empty).
    """
    values = {
        "username": identity.username,
        "email": identity.email,
        "subject": identity.subject,
        "store": identity.store,
        "issuer": identity.issuer,
    }
    missing = False

    def fill(match: re.Match[str]) -> str:
        nonlocal missing
        name = match.group(1)
        value = identity.attributes.get(name[5:]) if name.startswith("attr.") else values.get(name)
        if value is None:
            missing = True
            return ""
        return value

    result = _TEMPLATE.sub(fill, template)
    return None if missing else result


def effective_duration(role: RoleConfig, requested: int | None, *, role_chaining: bool) -> int:
    """The shortest useful duration: the request (or the role's default, or one hour), clamped to the limits."""
    ceiling = min(role.max_duration_seconds, STS_MAX_DURATION)
    if role_chaining:
        ceiling = min(ceiling, ROLE_CHAINING_MAX_SECONDS)
    wanted = requested or role.default_duration_seconds or min(3600, ceiling)
    return max(STS_MIN_DURATION, min(wanted, ceiling))


def mfa_shortfall(identity: Identity, role: RoleConfig, now: datetime) -> tuple[str, str] | None:
    """Why this identity's MFA evidence does not meet the role, as (reason code, sentence); None if it does.

    The evidence is the IdP's plus every factor completed at the broker in this session, each with its time;
    a role with ``mfa_max_age_minutes`` counts only proofs at least that recent (a step-up for sensitive roles).
    """
    if identity.mfa.level < role.mfa:
        return (
            "mfa_insufficient",
            f"role {role.name!r} needs {role.mfa.label}, this sign-in has {identity.mfa.level.label}",
        )
    if role.mfa_max_age_minutes is not None and role.mfa > MfaLevel.NONE:
        since = now - timedelta(minutes=role.mfa_max_age_minutes)
        if identity.mfa.level_since(since) < role.mfa:
            return (
                "mfa_stale",
                f"role {role.name!r} needs {role.mfa.label} proven within the last {role.mfa_max_age_minutes} minutes",
            )
    return None


def _client_allowed(role: RoleConfig, client_ip: str | None) -> bool:
    if not role.source_cidrs:
        return True
    if client_ip is None:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in network for network in role.source_cidrs)


def within_allowed_hours(role: RoleConfig, now: datetime) -> bool:
    """True when ``now`` falls in the role's ``allowed_hours`` (always, when it has none)."""
    hours = role.allowed_hours
    if hours is None:
        return True
    local = now.astimezone(ZoneInfo(hours.timezone))
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[local.weekday()]
    return day in hours.days and hours.start_hour <= local.hour < hours.end_hour


def active_grant(role: RoleConfig, grants_held: Sequence[ActiveGrant], now: datetime) -> ActiveGrant | None:
    """The approved window for this role that lasts longest from ``now``, if one is open."""
    open_ = [g for g in grants_held if g.role == role.name and g.ends_at > now]
    return max(open_, key=lambda g: g.ends_at) if open_ else None


def decide(
    identity: Identity,
    roles: Sequence[RoleConfig],
    request: AccessRequest,
    now: datetime,
    *,
    active_grants: Sequence[ActiveGrant] = (),
) -> Decision:
    """Default deny: grant ``request.role`` only if every check passes. ``now`` is for time-bound rules.

    ``active_grants`` are the identity's approved just-in-time windows (read by the caller): a role with
    ``requires_request`` is usable only inside one, and its credentials are capped to the window's end.
    """
    role = next((r for r in roles if r.name == request.role), None)
    if role is None:
        return _deny("role_unknown", f"no role named {request.role!r}")
    if not grants(role, identity):
        return _deny("role_not_granted", f"no grant rule of role {role.name!r} matches this identity", role=role)
    shortfall = mfa_shortfall(identity, role, now)
    if shortfall is not None:
        return _deny(shortfall[0], shortfall[1], role=role, required_mfa=role.mfa)
    if not _client_allowed(role, request.client_ip):
        return _deny(
            "source_ip_not_allowed",
            f"client address {request.client_ip} is outside the role's allowed networks",
            role=role,
        )
    if request.duration_seconds is not None and request.duration_seconds < 0:
        return _deny("duration_invalid", "duration must be positive", role=role)
    if not within_allowed_hours(role, now):
        return _deny("outside_allowed_hours", f"role {role.name!r} may not be used at this time", role=role)
    window: ActiveGrant | None = None
    if role.requires_request is not None:
        window = active_grant(role, active_grants, now)
        if window is None:
            return _deny(
                "request_required",
                f"role {role.name!r} needs an approved access request; none is active for this identity",
                role=role,
            )

    tags: dict[str, str] = {}
    for key, template in role.session_tags.items():
        value = render_template(template, identity)
        if value is None:
            continue
        if len(value) > MAX_TAG_VALUE or not _TAG_VALUE.match(value):
            return _deny("tag_value_invalid", f"session tag {key!r} would be an invalid STS tag value", role=role)
        tags[key] = value
    if len(tags) > MAX_TAGS:
        return _deny("too_many_tags", f"{len(tags)} session tags exceed STS's limit of {MAX_TAGS}", role=role)

    policy: str | None = None
    digest: str | None = None
    if role.session_policy is not None:
        policy = json.dumps(role.session_policy, separators=(",", ":"), sort_keys=True)
        if len(policy) > MAX_SESSION_POLICY_CHARS:
            return _deny(
                "session_policy_too_large",
                f"the session policy is {len(policy)} characters; STS accepts {MAX_SESSION_POLICY_CHARS}",
                role=role,
            )
        digest = hashlib.sha256(policy.encode()).hexdigest()

    duration = effective_duration(role, request.duration_seconds, role_chaining=request.role_chaining)
    reasons = [f"granted by role {role.name!r}"]
    if window is not None:
        # Credentials should not outlive the approval; STS cannot go below its minimum, and revocation at the
        # window's end (broker.revocation) covers the remainder.
        remaining = int((window.ends_at - now) / timedelta(seconds=1))
        duration = max(STS_MIN_DURATION, min(duration, remaining))
        reasons.append(f"within access request {window.request_id}, approved until {window.ends_at.isoformat()}")
    if request.duration_seconds and duration != request.duration_seconds:
        reasons.append(f"duration clamped from {request.duration_seconds}s to {duration}s")
    return Decision(
        allowed=True,
        reason="granted",
        reasons=tuple(reasons),
        role=role,
        duration_seconds=duration,
        requested_duration_seconds=request.duration_seconds,
        role_session_name=sts_name(identity.username),
        source_identity=sts_name(identity.principal),
        tags=tags,
        transitive_tag_keys=tuple(k for k in role.transitive_tags if k in tags),
        session_policy=policy,
        policy_digest=digest,
        policy_arns=tuple(role.policy_arns),
        grant_request_id=window.request_id if window else None,
    )


# ---------------------------------------------------------------- broker access tokens for internal services


@dataclass(frozen=True)
class AudienceDecision:
    allowed: bool
    reason: str
    reasons: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    ttl_seconds: int | None = None


def decide_audience(
    identity: Identity, bindings: Sequence[AudienceBinding], audience: str, scopes: Sequence[str] | None
) -> AudienceDecision:
    """Default deny: a broker token for ``audience`` only if a binding for it grants this identity.

    The grantable scopes are the union over the matching bindings; asking for any other scope is refused
    (never silently narrowed, so a caller learns it asked for too much). ``scopes=None`` means "what the
    bindings give".
    """
    named = [b for b in bindings if b.audience == audience]
    if not named:
        return AudienceDecision(False, "audience_unknown", (f"no audience binding for {audience!r}",))
    matching = [b for b in named if any(rule_matches(rule, identity) for rule in b.grant)]
    if not matching:
        return AudienceDecision(
            False, "audience_not_granted", (f"no grant rule for audience {audience!r} matches this identity",)
        )
    grantable = sorted({scope for b in matching for scope in b.scopes})
    if scopes is not None:
        extra = sorted(set(scopes) - set(grantable))
        if extra:
            return AudienceDecision(
                False, "scope_not_granted", (f"scopes {extra} are not granted for audience {audience!r}",)
            )
        granted = tuple(sorted(set(scopes)))
    else:
        granted = tuple(grantable)
    ttls = [b.ttl_seconds for b in matching if b.ttl_seconds]
    return AudienceDecision(
        True, "granted", (f"granted by an audience binding for {audience!r}",), granted, min(ttls) if ttls else None
    )


# ---------------------------------------------------------------- the simulator: why a role is (not) usable


@dataclass(frozen=True)
class ConditionCheck:
    """One condition of a grant rule, whether it held for the identity, and why."""

    condition: str
    held: bool
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"condition": self.condition, "held": self.held, "why": self.why}


@dataclass(frozen=True)
class RuleCheck:
    index: int
    matched: bool
    conditions: tuple[ConditionCheck, ...]

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.index, "matched": self.matched, "conditions": [c.to_json() for c in self.conditions]}


@dataclass(frozen=True)
class Explanation:
    """What :func:`decide` would answer for one role, with every grant rule checked and the STS request."""

    role: RoleConfig
    rules: tuple[RuleCheck, ...]
    decision: Decision

    @property
    def granted_by_rule(self) -> bool:
        return any(rule.matched for rule in self.rules)

    def to_json(self) -> dict[str, Any]:
        decision = self.decision
        data: dict[str, Any] = {
            "role": self.role.name,
            "role_arn": self.role.role_arn,
            "visible": self.granted_by_rule,
            "usable": decision.allowed,
            "reason": decision.reason,
            "reasons": list(decision.reasons),
            "required_mfa": self.role.mfa.label,
            "requires_request": self.role.requires_request is not None,
            "rules": [rule.to_json() for rule in self.rules],
        }
        if decision.allowed:
            data["sts"] = {
                "duration_seconds": decision.duration_seconds,
                "role_session_name": decision.role_session_name,
                "source_identity": decision.source_identity,
                "tags": dict(decision.tags),
                "transitive_tag_keys": list(decision.transitive_tag_keys),
                "session_policy": json.loads(decision.session_policy) if decision.session_policy else None,
                "policy_arns": list(decision.policy_arns),
                # Tags whose template has no value for this identity are left out, not sent empty.
                "tags_omitted": {k: v for k, v in self.role.session_tags.items() if k not in decision.tags},
            }
        return data


def _one_of(name: str, wanted: Sequence[str], have: str | None) -> ConditionCheck:
    held = have is not None and have in wanted
    shown = "none" if have is None else repr(have)
    why = f"{name} {shown} is {'' if held else 'not '}one of {sorted(wanted)}"
    return ConditionCheck(f"{name} in {sorted(wanted)}", held, why)


def explain_rule(rule: GrantRule, identity: Identity, index: int = 0) -> RuleCheck:
    """Each condition of ``rule`` checked separately (the same comparisons as :func:`rule_matches`)."""
    checks: list[ConditionCheck] = []
    if rule.everyone:
        checks.append(ConditionCheck("everyone", True, "the rule grants every signed-in identity"))
    if rule.stores:
        checks.append(_one_of("store", rule.stores, identity.store))
    if rule.groups:
        common = sorted(identity.groups.intersection(rule.groups))
        why = f"member of {common}" if common else f"groups {sorted(identity.groups)} include none of them"
        checks.append(ConditionCheck(f"groups any of {sorted(rule.groups)}", bool(common), why))
    if rule.subjects:
        checks.append(_one_of("subject", rule.subjects, identity.subject))
    if rule.emails:
        checks.append(_one_of("email", rule.emails, identity.email))
    for claim, allowed in rule.claims.items():
        checks.append(_one_of(f"claim {claim}", allowed, identity.attributes.get(claim)))
    matched = rule_matches(rule, identity)
    return RuleCheck(index, matched, tuple(checks))


def explain(
    identity: Identity,
    roles: Sequence[RoleConfig],
    now: datetime,
    *,
    role: str | None = None,
    channel: Channel = Channel.CLI,
    client_ip: str | None = None,
    duration_seconds: int | None = None,
    role_chaining: bool = False,
    active_grants: Sequence[ActiveGrant] = (),
) -> list[Explanation]:
    """For each role (or the one named), every grant rule checked and what :func:`decide` answers. No I/O.

    Answers "why can't I see role X": a role is visible when a rule matches, and usable when ``decide`` allows
    it (MFA, source address, allowed hours, approved request, STS limits); the STS request it would make is
    included for usable roles.
    """
    chosen = [r for r in roles if role is None or r.name == role]
    explanations = []
    for config in chosen:
        request = AccessRequest(
            role=config.name,
            channel=channel,
            duration_seconds=duration_seconds,
            client_ip=client_ip,
            role_chaining=role_chaining,
        )
        rules = tuple(explain_rule(rule, identity, index) for index, rule in enumerate(config.grant))
        decision = decide(identity, roles, request, now, active_grants=active_grants)
        explanations.append(Explanation(config, rules, decision))
    return explanations


def simulated_identity(
    *,
    store: str,
    subject: str,
    now: datetime,
    username: str | None = None,
    email: str | None = None,
    groups: Sequence[str] = (),
    attributes: dict[str, str] | None = None,
    mfa: MfaLevel = MfaLevel.NONE,
    mfa_age_minutes: int | None = None,
) -> Identity:
    """An identity described by an operator, for :func:`explain` only: it is never verified and never issued to.

    ``mfa_age_minutes`` is how long ago the MFA proof happened (default: just now).
    """
    proven_at = now - timedelta(minutes=mfa_age_minutes or 0)
    return Identity(
        subject=subject,
        issuer=store,
        store=store,
        username=username or subject,
        email=email,
        groups=frozenset(groups),
        attributes=dict(attributes or {}),
        mfa=MfaEvidence(level=mfa, methods=(), authenticated_at=proven_at if mfa > MfaLevel.NONE else None),
    )
