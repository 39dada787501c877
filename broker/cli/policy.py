"""`broker policy explain`: which roles an identity gets and why, from the configuration alone.

Pure: it reads the YAML (no database, no AWS call) and runs ``broker.policy.explain``. The same answer comes
from the admin API (``POST /api/v1/admin/policy/explain``).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console

from broker.cli.options import DEFAULT_CONFIG, ConfigOption, load_config

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
policy_app = typer.Typer(help="Simulate the grant rules: why a role is (not) available.", no_args_is_help=True)


def register(app: typer.Typer, panel: str) -> None:
    app.add_typer(policy_app, name="policy", rich_help_panel=panel)


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    pairs = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            err.print(f"{option} takes NAME=VALUE, not {item!r}", markup=False)
            raise typer.Exit(2)
        pairs[name] = value
    return pairs


def render(explanations: list[dict[str, Any]], *, identity: dict[str, Any]) -> list[str]:
    """The explanation as plain lines, one block per role."""
    lines = [
        f"Identity: {identity['principal']} (store {identity['store']}, subject {identity['subject']}, "
        f"groups {identity['groups']}, MFA {identity['mfa']})",
    ]
    for item in explanations:
        state = "USABLE" if item["usable"] else ("visible, not usable" if item["visible"] else "not granted")
        lines += ["", f"{item['role']}: {state} ({item['reason']})"]
        for rule in item["rules"]:
            lines.append(f"  rule {rule['rule']}: {'matched' if rule['matched'] else 'did not match'}")
            for check in rule["conditions"]:
                lines.append(f"    [{'x' if check['held'] else ' '}] {check['condition']}: {check['why']}")
        lines += [f"  - {reason}" for reason in item["reasons"]]
        sts = item.get("sts")
        if sts:
            lines.append(
                f"  duration {sts['duration_seconds']}s, SourceIdentity {sts['source_identity']}, "
                f"RoleSessionName {sts['role_session_name']}"
            )
            lines.append(f"  session tags: {json.dumps(sts['tags'])}")
            for key, template in sts["tags_omitted"].items():
                lines.append(f"  session tag {key} left out: {template} has no value for this identity")
            if sts["transitive_tag_keys"]:
                lines.append(f"  transitive tags: {sts['transitive_tag_keys']}")
            lines.append(f"  session policy: {json.dumps(sts['session_policy'])}")
            if sts["policy_arns"]:
                lines.append(f"  managed policies: {sts['policy_arns']}")
    return lines


@policy_app.command("explain")
def explain(
    store: Annotated[str, typer.Option(help="Identity store (or workload issuer) name the identity comes from.")],
    subject: Annotated[str, typer.Option(help="The identity's subject (OIDC sub, SAML NameID, username).")],
    config: ConfigOption = DEFAULT_CONFIG,
    role: Annotated[str | None, typer.Option(help="Explain only this role.")] = None,
    username: Annotated[str | None, typer.Option(help="Username [default: the subject].")] = None,
    email: Annotated[str | None, typer.Option()] = None,
    group: Annotated[list[str] | None, typer.Option(help="Group membership (repeatable).")] = None,
    attr: Annotated[list[str] | None, typer.Option(help="Attribute or claim NAME=VALUE (repeatable).")] = None,
    mfa: Annotated[str, typer.Option(help="MFA evidence: none, mfa or phishing_resistant.")] = "none",
    mfa_age_minutes: Annotated[int | None, typer.Option(help="Minutes since the MFA proof [default: 0].")] = None,
    ip: Annotated[str | None, typer.Option(help="Client address, for roles with source_cidrs.")] = None,
    at: Annotated[datetime | None, typer.Option(help="Time to evaluate at (ISO 8601; default now, UTC).")] = None,
    duration: Annotated[int | None, typer.Option(help="Requested duration in seconds.")] = None,
    channel: Annotated[str, typer.Option(help="console, cli or service.")] = "cli",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which roles an identity gets, each grant rule matched or failed and why, and the STS request it implies.

    No database and no AWS call: the answer comes from the configuration. Approved just-in-time requests are
    not read, so a role with `requires_request` shows `request_required`.
    """
    from broker.identity import Channel, MfaLevel
    from broker.policy import explain as run_explain
    from broker.policy import simulated_identity

    settings = load_config(config)
    try:
        level = MfaLevel.parse(mfa)
        chosen_channel = Channel(channel)
    except (KeyError, ValueError):
        err.print("--mfa is none, mfa or phishing_resistant; --channel is console, cli or service.", markup=False)
        raise typer.Exit(2) from None
    if role is not None and settings.role(role) is None:
        err.print(f"No role named {role!r} in {config}; roles: {[r.name for r in settings.roles]}", markup=False)
        raise typer.Exit(2)
    now = at if at is not None else datetime.now(UTC)
    now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    identity = simulated_identity(
        store=store,
        subject=subject,
        now=now,
        username=username,
        email=email,
        groups=group or [],
        attributes=_pairs(attr, "--attr"),
        mfa=level,
        mfa_age_minutes=mfa_age_minutes,
    )
    results = [
        e.to_json()
        for e in run_explain(
            identity, settings.roles, now, role=role, channel=chosen_channel, client_ip=ip, duration_seconds=duration
        )
    ]
    summary = {
        "principal": identity.principal,
        "store": store,
        "subject": subject,
        "groups": sorted(identity.groups),
        "mfa": level.label,
        "at": now.isoformat(),
    }
    if as_json:
        sys.stdout.write(json.dumps({"identity": summary, "roles": results}, indent=2) + "\n")
        return
    for line in render(results, identity=summary):
        out.print(line, markup=False, soft_wrap=True)
