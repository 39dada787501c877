"""Access review: for each role, who may use it, who did, and what is never used.

Answers an auditor's questions from the configuration and the database alone:

* which grant rules give the role, and whether it is standing or just-in-time (``requires_request``);
* which principals the broker has seen whose stored identity (store, subject, username, email, groups as of
  their last sign-in) matches a rule: the people the role is granted to;
* who used it in the last N days (issuances) and how often, and when last;
* grants never used in that period: candidates for removal;
* use by principals no rule matches today (their groups changed since): worth a look;
* people a SCIM client provisioned who never signed in, with the roles their provisioned groups would give
  them (grant rules may name provisioned groups before anyone in them has signed in).

Rules that test ``claims`` cannot be evaluated from stored data (claims are not persisted); such rules are
reported as ``claims_not_evaluated`` and their principals appear only through usage.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from typing import Any

from broker.identity import Identity
from broker.policy import rule_matches
from broker.settings import GrantRule, Settings
from broker.store import queries
from broker.store.db import Database


def describe_rule(rule: GrantRule) -> str:
    parts = []
    for key in ("stores", "groups", "subjects", "emails"):
        values = getattr(rule, key)
        if values:
            parts.append(f"{key}={','.join(values)}")
    for claim, allowed in rule.claims.items():
        parts.append(f"claim {claim}={','.join(allowed)}")
    if rule.everyone:
        parts.append("everyone")
    return " AND ".join(parts)


def access_report(settings: Settings, db: Database, *, now: datetime, days: int) -> dict[str, Any]:
    since = now - timedelta(days=days)
    with db.transaction() as session:
        principals = list(queries.list_principals(session))
        usage = queries.usage_since(session, since=since)
        approved = [
            r
            for r in queries.list_access_requests(session, limit=100000)
            if r.grant_starts_at is not None and r.grant_starts_at >= since
        ]
    names = {p.id: p.email or p.username for p in principals}
    identities = {
        p.id: Identity(
            subject=p.subject,
            issuer=p.issuer,
            store=p.store,
            username=p.username,
            email=p.email,
            groups=frozenset(str(g) for g in p.groups or ()),
        )
        for p in principals
        if not p.disabled
    }
    roles = []
    for role in settings.roles:
        granted_to = sorted(
            names[pid]
            for pid, identity in identities.items()
            if any(rule_matches(rule, identity) for rule in role.grant if not rule.claims)
        )
        used = {
            names.get(pid, str(pid)): {"issuances": count, "last_used": last.isoformat()}
            for name, pid, count, last in usage
            if name == role.name
        }
        requests = [r for r in approved if r.role_name == role.name]
        roles.append(
            {
                "role": role.name,
                "role_arn": role.role_arn,
                "access": "just_in_time" if role.requires_request else "standing",
                "mfa": role.mfa.label,
                "rules": [describe_rule(rule) for rule in role.grant],
                "claims_not_evaluated": any(rule.claims for rule in role.grant),
                "granted_to": granted_to,
                "used_by": dict(sorted(used.items())),
                "unused_grants": sorted(set(granted_to) - set(used)),
                "used_without_matching_rule": sorted(set(used) - set(granted_to)),
                "approved_requests": len(requests),
                "approvers": list(role.requires_request.approvers) if role.requires_request else [],
            }
        )
    return {
        "generated_at": now.isoformat(),
        "days": days,
        "since": since.isoformat(),
        "roles": roles,
        "provisioned_never_signed_in": never_signed_in(settings, db),
    }


def never_signed_in(settings: Settings, db: Database) -> list[dict[str, Any]]:
    """Provisioned people with no sign-in yet, and the roles their provisioned groups would grant them."""
    with db.transaction() as session:
        users = [u for u in queries.list_scim_users(session) if u.principal_id is None]
        groups = queries.scim_groups_of(session, user_ids=[u.id for u in users]) if users else {}
    people = []
    for user in users:
        names = sorted(g.display_name for g in groups[user.id])
        identity = Identity(
            subject=user.external_id or "",
            issuer="",
            store=user.store,
            username=user.user_name,
            email=user.email_key,
            groups=frozenset(names),
        )
        would_get = [
            role.name
            for role in settings.roles
            if any(rule_matches(rule, identity) for rule in role.grant if not rule.claims)
        ]
        people.append(
            {
                "store": user.store,
                "user_name": user.user_name,
                "active": user.active,
                "provisioned_at": user.created_at.isoformat(),
                "groups": names,
                "roles": would_get if user.active else [],
            }
        )
    return people


def report_csv(report: dict[str, Any]) -> str:
    """One row per (role, principal): granted?, issuances, last used. Roles nobody holds get one empty row."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["role", "access", "principal", "granted", "issuances", "last_used", "status"])
    for role in report["roles"]:
        people = sorted(set(role["granted_to"]) | set(role["used_by"]))
        if not people:
            writer.writerow([role["role"], role["access"], "", "", 0, "", "nobody"])
        for person in people:
            use = role["used_by"].get(person, {})
            granted = person in role["granted_to"]
            status = "used" if use and granted else ("unused_grant" if granted else "used_without_matching_rule")
            count, last = use.get("issuances", 0), use.get("last_used", "")
            writer.writerow([role["role"], role["access"], person, granted, count, last, status])
    return out.getvalue()
