"""``broker signing-keys list|rotate``: the broker's own token-signing keys (``broker.oauth.tokens``).

Thin wiring. ``rotate`` audits as the operator (``operator:<login>@<host>`` or ``--as``, store ``cli``) in the
same transaction as the rotation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from broker.cli.options import DEFAULT_CONFIG, ConfigOption, err, out
from broker.terminal import print_table

if TYPE_CHECKING:
    from broker.services import Services

signing_keys_app = typer.Typer(
    help="The broker's token-signing keys, published at /jwks.json: list them, rotate now.", no_args_is_help=True
)


def register(app: typer.Typer, panel: str) -> None:
    app.add_typer(signing_keys_app, name="signing-keys", rich_help_panel=panel)


def _services(config: Path) -> Services:
    from broker.cli.options import operator_services

    return operator_services(config)


def _when(value: object) -> str:
    return "" if value is None else str(value).replace("+00:00", "Z")


@signing_keys_app.command("list")
def signing_keys_list(
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the stored keys, newest first: current (signs), retired (still in /jwks.json until publish-until)."""
    tokens = _services(config).tokens
    rows = [
        {
            "kid": k.kid,
            "alg": k.alg,
            "state": k.state,
            "created": _when(k.created_at),
            "publish_until": _when(k.publish_until),
        }
        for k in tokens.key_states()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("kid", "alg", "state", "created", "publish-until")
    for row in rows:
        table.add_row(row["kid"], row["alg"], row["state"], row["created"], row["publish_until"] or "-")
    print_table(out, table)


@signing_keys_app.command("rotate")
def signing_keys_rotate(
    config: ConfigOption = DEFAULT_CONFIG,
    revoke: Annotated[
        bool,
        typer.Option(
            "--revoke",
            help="The old key is compromised: remove it from /jwks.json and refuse its tokens now, instead of "
            "keeping it published until they expire.",
        ),
    ] = False,
    as_name: Annotated[
        str | None,
        typer.Option("--as", envvar="BROKER_OPERATOR", help="Operator name for the audit trail (default: login@host)."),
    ] = None,
) -> None:
    """Make a new signing key active now (after a suspected compromise); audited.

    The old key stops signing at once and stays in /jwks.json until every token it signed has expired; with
    --revoke it leaves /jwks.json at once and the broker refuses its tokens at once. Running broker processes
    sign with the new key within oauth.tokens.key_cache_seconds.
    """
    from broker.cli.options import actor, ctx
    from broker.errors import BrokerError

    services = _services(config)
    try:
        done = services.tokens.rotate_now(revoke=revoke, audit=services.audit, actor=actor(as_name).name, ctx=ctx())
    except BrokerError as exc:
        err.print(f"{exc.code} ({exc.reason}): {exc.message}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    out.print(f"New signing key {done.new_kid} is active now.", markup=False, highlight=False)
    if done.old_kid is None:
        pass
    elif done.revoked:
        out.print(
            f"Old key {done.old_kid} revoked: removed from /jwks.json and its tokens refused from now on.",
            markup=False,
            highlight=False,
        )
    else:
        out.print(
            f"Old key {done.old_kid} no longer signs; it stays in /jwks.json until "
            f"{_when(done.old_published_until)} (its last token's expiry), then is deleted.",
            markup=False,
            highlight=False,
        )
    out.print(
        f"Running broker processes switch within oauth.tokens.key_cache_seconds "
        f"({services.settings.oauth.tokens.key_cache_seconds} s).",
        markup=False,
        highlight=False,
    )
